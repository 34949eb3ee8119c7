"""@triton.jit helpers and launch-configuration helpers shared by the op kernels.

Registers nothing; imports only torch and triton.
"""

from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl

NORMALIZE_EPS = 1e-12  # F.normalize's default eps: the reference's semantics

# ----------------------------------------------------------------------------- kernels


@triton.jit
def finite_or_zero(m):
    # The reference's m_safe: a column or row whose max is +-inf or NaN is shifted by 0.
    return tl.where(m - m == 0.0, m, 0.0)


@triton.jit
def rescale(run_sum, run_max, shift):
    # sum exp(. - old shift) -> sum exp(. - shift). An empty sum (max -inf) stays 0:
    # exp(0 - shift) overflows once the new max is below -88, and 0 * inf is NaN.
    return tl.where(run_sum == 0.0, run_sum, run_sum * tl.exp(finite_or_zero(run_max) - shift))


@triton.jit
def online_logsumexp(run_max, run_sum, z, AXIS: tl.constexpr):
    # One step of a streamed logsumexp along AXIS of the tile z: the new (max, sum of
    # exp(z - finite_or_zero(max))), the old sum rescaled to the new shift.
    new_max = tl.maximum(run_max, tl.max(z, axis=AXIS))
    shift = finite_or_zero(new_max)
    run_sum = rescale(run_sum, run_max, shift)
    if AXIS == 0:
        run_sum += tl.sum(tl.exp(z - shift[None, :]), axis=0)
    else:
        run_sum += tl.sum(tl.exp(z - shift[:, None]), axis=1)
    return new_max, run_sum


@triton.jit
def as_fp32(x):
    # Python floats reach a kernel as fp32 scalars from an eager launch and as fp64 from
    # torch.compile's generated launcher; the kernels compute in fp32 either way.
    return tl.cast(x, tl.float32)


@triton.jit
def sqrt_rn(x):
    """IEEE-rounded square root (the default fp32 sqrt is approximate on the GPU;
    fp64's is exact and sqrt_rn takes fp32 only)."""
    if x.dtype == tl.float64:
        root = tl.sqrt(x)
    else:
        root = tl.sqrt_rn(x)
    return root


@triton.jit
def inverse_norm(ss, EPS: tl.constexpr):
    """1 / max(sqrt(ss), eps) of a sum of squares, IEEE-rounded like the C++ kernels."""
    clamped = tl.maximum(sqrt_rn(ss), tl.full(ss.shape, EPS, ss.dtype))
    if ss.dtype == tl.float64:
        rn = 1.0 / clamped
    else:
        rn = tl.div_rn(tl.full(ss.shape, 1.0, ss.dtype), clamped)
    return rn


@triton.jit
def grid_barrier(sem):
    """Every program of a cooperative grid arrives before any leaves. `sem` (an int32
    word) starts at 0 or 2^31: program 0 adds 2^31 - (P - 1) and the others 1, so the last
    arrival flips bit 31 and leaves the low bits at 0; each program waits for bit 31 to
    differ from what it saw when it arrived. The word ends at 0 or 2^31, ready for the next
    barrier or launch. Release/acquire at GPU scope make the writes before the barrier
    visible after it."""
    word = sem.to(tl.pointer_type(tl.uint32))
    one = tl.full([], 1, tl.uint32)
    top = one << 31
    tl.debug_barrier()
    programs = tl.num_programs(0).to(tl.uint32)
    arrive = tl.where(tl.program_id(0) == 0, top - (programs - one), one)
    seen = tl.atomic_add(word, arrive, sem="release", scope="gpu")
    flipped = False
    while not flipped:
        now = tl.atomic_add(word, one - one, sem="acquire", scope="gpu")
        flipped = ((seen ^ now) & top) != 0
    tl.debug_barrier()


@triton.jit
def row_sums_f64(x, d):
    """||x||^2 and <x, d> per row of a tile, in fp64: products of fp32 values are
    exact there, so the projection below cancels exactly where d is parallel to x."""
    x64 = x.to(tl.float64)
    return tl.sum(x64 * x64, axis=1), tl.sum(x64 * d.to(tl.float64), axis=1)


@triton.jit
def project_rows(d, x, rn, ss, dot, EPS: tl.constexpr):
    """Gradient of x / max(||x||, eps) from d = d(loss)/d(x_hat), in fp64:
    rn (d - x <x, d> / ||x||^2) where ||x|| >= eps (x_hat <x_hat, d> without the
    rounding of rn^2), rn d where clamped. ss, dot: fp64 row sums (row_sums_f64)."""
    keep = tl.sqrt(ss) >= EPS
    c = tl.where(keep, dot / tl.where(keep, ss, 1.0), 0.0)
    return rn.to(tl.float64)[:, None] * (d.to(tl.float64) - x.to(tl.float64) * c[:, None])


# --------------------------------------------------------------------- launch helpers


def host_fp32(x: float) -> float:
    """x rounded to fp32 on the host, without a tensor (no device work, no sync; a fake
    tensor under FakeTensorMode would have no value): inf past fp32's range."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def loss_norm(v: int, a: int, b: int) -> float:
    """The SwAV loss's normalization A (V - 1) B: mean over a, over v != a, over b."""
    return float(a * (v - 1) * b)


def pow2(n: int, lo: int, hi: int) -> int:
    """The power of two >= n, clamped to [lo, hi] (a block size)."""
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def num_warps(block_elements: int) -> int:
    """Warps for a program holding a tile of `block_elements`: 4 up to 4096, 16 at most."""
    return max(4, min(16, block_elements // 1024))


# The GPU that CPU tensors stand for, or None: the launch audit (benchmarks/audit.py)
# traces the launchers on CPU-typed fake tensors, as the autograd engine will not run a
# backward pass on CUDA tensors, fake or not, without a GPU; launch configurations then
# follow these properties as they would a real device's.
AUDITED_GPU = None


def gpu_properties(device: torch.device):
    """The properties of the GPU a launch on `device` runs on, or None (the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device)
    return AUDITED_GPU


def target_programs(device: torch.device, interpreted: int) -> int:
    """Programs that keep the device busy: about two per SM on a GPU; `interpreted`
    under the interpreter, where each program runs in Python (a few, but more than one,
    so that the tests exercise the paths that merge or split work across programs)."""
    props = gpu_properties(device)
    return interpreted if props is None else 2 * props.multi_processor_count


# One Hopper SM (sm_90): 64K 32-bit registers, 64 warps (2048 threads), 228 KiB of shared
# memory; what programs_per_sm assumes for a GPU whose properties it is not given.
SM90_SM = {"regs_per_multiprocessor": 65536, "max_threads_per_multi_processor": 2048,
           "shared_memory_per_multiprocessor": 228 * 1024}  # fmt: skip


def programs_per_sm(registers: int, shared_bytes: int, warps: int, props=None) -> int:
    """Programs of `warps` warps that one SM holds at once, the bound of a cooperative grid
    per SM: registers allocated per warp in units of 256, at most 32 blocks, and the SM's
    registers, threads and shared memory from `props` (torch's device properties), or an
    sm_90 SM's (SM90_SM) without them."""
    sm = {key: getattr(props, key, value) for key, value in SM90_SM.items()}
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_registers = (sm["regs_per_multiprocessor"] // per_warp) // warps
    by_warps = sm["max_threads_per_multi_processor"] // 32 // warps
    by_shared = sm["shared_memory_per_multiprocessor"] // shared_bytes if shared_bytes else 32
    return min(by_registers, by_warps, by_shared, 32)


def dot_precision(x: torch.Tensor) -> str:
    """fp32 operands follow torch's matmul precision setting (TF32 only when allowed);
    the interpreter and other dtypes are exact products with fp32/fp64 accumulation."""
    tf32 = x.is_cuda and x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return "tf32" if tf32 else "ieee"

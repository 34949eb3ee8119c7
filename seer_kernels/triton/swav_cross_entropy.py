"""SwAV's multi-crop cross-entropy on Triton: kernels, then launchers (plain functions,
tensors in and out; one per schema op of csrc/ops.cpp, named like it). The algorithm is
the one of every backend (seer_kernels/ops/swav_cross_entropy.py); registers nothing.

One program per sample b holds all V crops of that sample as a (V, BLOCK_K) tile, so
each code row is read from memory once per direction and serves every crop (C_v is built
in registers from the A code rows), and scores are read once (online logsumexp over K
blocks). Bytes: forward V B K e_s + A B K e_c + 8 V B + 8 B; backward 2 V B K e_s +
2 A B K e_c + 8 V B (one extra pass over the codes for R_v, since only lse is kept).
FLOPs: ~ V B K (A + 5) each way plus one exp per score element.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seer_kernels._dtypes import accumulation_dtype
from seer_kernels._interpreter import wrap_triton
from seer_kernels.triton._common import host_fp32, loss_norm, pow2

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _targets(
    codes, b, v, k, kmask, A, B, K,
    VP: tl.constexpr, AP: tl.constexpr, BK: tl.constexpr, acc_t: tl.constexpr,
):  # fmt: skip
    """C_v at columns k for every crop v of the tile: the sum of the code rows a != v
    of sample b, added in increasing a (the order of the C++ kernels)."""
    acc = tl.zeros((VP, BK), dtype=acc_t)
    for a in tl.static_range(AP):
        row = tl.load(codes + (a * B + b) * K + k, mask=kmask & (a < A), other=0.0)
        acc += tl.where(v[:, None] != a, row.to(acc_t)[None, :], 0.0)
    return acc


@triton.jit
def _xent_fwd_kernel(
    scores, codes, lse_out, partial_out, V, A, B, K, inv_t, inv_t_lo,
    VP: tl.constexpr, AP: tl.constexpr, BK: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    """Program b: lse of the V rows scores[:, b] (fp64) and the partial loss of sample b,
    sum_v R_v log(s_v) + <C_v, m_v - x> / T (the reference's form: no cancellation)."""
    acc_t: tl.constexpr = tl.float64 if F64 else tl.float32  # fp64 only for fp64 scores
    inv_t64 = tl.cast(inv_t, tl.float64) + tl.cast(inv_t_lo, tl.float64)
    inv_t_acc = inv_t64.to(acc_t)
    b = tl.program_id(0).to(tl.int64)
    v = tl.arange(0, VP)
    vmask = v < V
    base = (v[:, None] * B + b) * K
    m = tl.full((VP,), float("-inf"), acc_t)  # running max of the row
    s = tl.zeros((VP,), acc_t)  # sum exp((x - m) / T)
    d = tl.zeros((VP,), acc_t)  # <C_v, m - x> over the columns so far
    r = tl.zeros((VP,), acc_t)  # R_v over the columns so far
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        kmask = k < K
        mask = vmask[:, None] & kmask[None, :]
        x = tl.load(scores + base + k[None, :], mask=mask, other=float("-inf")).to(acc_t)
        c = _targets(codes, b, v, k, kmask, A, B, K, VP, AP, BK, acc_t)
        m_new = tl.maximum(m, tl.max(x, 1))
        # Padded crops stay at m = -inf: shift by 0 there and add nothing.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        grown = tl.where(m == float("-inf"), 0.0, (m_new - m) * r)
        gap = tl.where(mask, shift[:, None] - x, 0.0)
        s = s * tl.exp((m - shift) * inv_t_acc) + tl.sum(tl.where(mask, tl.exp(-gap * inv_t_acc), 0.0), 1)
        d = d + grown + tl.sum(c * gap, 1)
        r += tl.sum(c, 1)
        m = m_new
    log_s = tl.log(s.to(tl.float64))
    tl.store(lse_out + v * B + b, m.to(tl.float64) * inv_t64 + log_s, mask=vmask)
    term = r.to(tl.float64) * log_s + d.to(tl.float64) * inv_t64
    tl.store(partial_out + b, tl.sum(tl.where(vmask, term, 0.0), 0))


@triton.jit
def _xent_bwd_kernel(
    grad_loss, scores, codes, lse, grad_out, V, A, B, K, inv_t, inv_t_lo, norm,
    VP: tl.constexpr, AP: tl.constexpr, BK: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    """Program b: grad[:, b] = grad_loss / (T norm) * (R_v softmax(x / T) - C_v). The
    exponent is (x - L_hi - L_lo) / T with L = T lse split in two acc_t values, exact
    near the row max however large |lse| is (fp32 lse would lose ~|lse| 6e-8)."""
    acc_t: tl.constexpr = tl.float64 if F64 else tl.float32  # fp64 only for fp64 scores
    inv_t64 = tl.cast(inv_t, tl.float64) + tl.cast(inv_t_lo, tl.float64)
    inv_t_acc = inv_t64.to(acc_t)
    b = tl.program_id(0).to(tl.int64)
    v = tl.arange(0, VP)
    vmask = v < V
    base = (v[:, None] * B + b) * K
    r = tl.zeros((VP,), acc_t)  # R_v: a pass over the code rows (only lse is saved)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        r += tl.sum(_targets(codes, b, v, k, k < K, A, B, K, VP, AP, BK, acc_t), 1)
    g = tl.load(grad_loss).to(acc_t) * (inv_t64 / norm).to(acc_t)
    big_l = tl.load(lse + v * B + b, mask=vmask, other=0.0) / inv_t64
    l_hi = big_l.to(acc_t)
    l_lo = (big_l - l_hi.to(tl.float64)).to(acc_t)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        kmask = k < K
        mask = vmask[:, None] & kmask[None, :]
        # -inf outside the tile's valid part: p = 0 there, nothing overflows.
        x = tl.load(scores + base + k[None, :], mask=mask, other=float("-inf")).to(acc_t)
        c = _targets(codes, b, v, k, kmask, A, B, K, VP, AP, BK, acc_t)
        p = tl.exp(((x - l_hi[:, None]) - l_lo[:, None]) * inv_t_acc)
        out = (r[:, None] * p - c) * g
        tl.store(grad_out + base + k[None, :], out.to(grad_out.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launchers


def _meta(scores: torch.Tensor, a: int, temperature: float) -> dict:
    """Kernel constants: all crops of a sample in one (VP, BK) tile of ~4k elements; 1/T
    as an fp32 value plus its fp32 remainder (Triton passes Python floats as fp32, the
    kernels rebuild 1/T in fp64 where it scales lse)."""
    v, _, k = scores.shape
    vp = triton.next_power_of_2(v)
    bk = pow2(k, 1, max(16, 4096 // vp))
    inv_t = 1.0 / temperature
    inv_t_hi = host_fp32(inv_t)
    f64 = accumulation_dtype(scores.dtype) == torch.float64
    return {
        "inv_t": inv_t_hi, "inv_t_lo": inv_t - inv_t_hi,
        "VP": vp, "AP": a, "BK": bk, "F64": f64, "num_warps": 8,
    }  # fmt: skip


def _launch_forward(scores, codes, temperature):
    v, b, k = scores.shape
    a = codes.shape[0]
    lse = torch.empty((v, b), dtype=torch.float64, device=scores.device)
    partial = torch.empty((b,), dtype=torch.float64, device=scores.device)
    wrap_triton(_xent_fwd_kernel)[(b,)](
        scores, codes, lse, partial, v, a, b, k, **_meta(scores, a, temperature)
    )
    return (partial.sum() / loss_norm(v, a, b)).to(accumulation_dtype(scores.dtype)), lse


def _launch_backward(grad_loss, scores, codes, lse, temperature):
    v, b, k = scores.shape
    a = codes.shape[0]
    grad = torch.empty_like(scores)
    wrap_triton(_xent_bwd_kernel)[(b,)](
        grad_loss, scores, codes, lse, grad, v, a, b, k, norm=a * (v - 1) * b, **_meta(scores, a, temperature)
    )
    return grad


# ------------------------------------------------- one launcher per schema op (csrc/ops.cpp)


def swav_cross_entropy(
    scores: torch.Tensor, codes: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_forward(scores.contiguous(), codes.contiguous(), temperature)


def swav_cross_entropy_backward(
    grad_loss: torch.Tensor, scores: torch.Tensor, codes: torch.Tensor, lse: torch.Tensor, temperature: float
) -> torch.Tensor:
    return _launch_backward(
        grad_loss.contiguous(), scores.contiguous(), codes.contiguous(), lse.contiguous(), temperature
    )

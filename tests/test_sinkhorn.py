"""sinkhorn: every available backend against the float64 oracle, adversarial inputs, the
NaN/Inf policy, the distributed composition, torch.compile, opcheck and bad input.

Tolerance rule (tests/tolerance.py): max |fused - oracle64| <= 2 x max |reference fp32 -
oracle64| + FLOOR. The oracle is the reference run in float64 on the same (already
rounded) input, so the input dtype adds no error of its own: every backend computes in
fp32, and FLOOR = 2e-6 (a few fp32 ulps of a code near 1) holds for every input dtype.
The Triton backend runs under TRITON_INTERPRET=1 here (tests/conftest.py): small shapes,
fp32/fp16 only (the interpreter has no bf16 arithmetic).
"""

from __future__ import annotations

import datetime
import importlib
import itertools
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import seer_kernels as sk
from seer_kernels import _backend, _registry, reference
from seer_kernels.ops import sinkhorn as sinkhorn_module
from tests.processes import run_with_capability
from tests.tolerance import assert_close_rule

BACKENDS = [b for b in _backend.available_backends("cpu", op="sinkhorn") if b != "reference"]
# The Triton launchers, importable only where triton is installed (their tests need it).
SK = importlib.import_module("seer_kernels.triton.sinkhorn") if _backend._HAS_TRITON else None
GPU_BACKENDS = (
    [b for b in _backend.available_backends("cuda", op="sinkhorn") if b != "reference"]
    if torch.cuda.is_available()
    else []
)


def _targets(with_reference: bool = False) -> list:
    """(backend, device) pairs: every fused backend usable on the CPU here, and on a GPU
    (marked gpu: benchmarks/gpu_check.sh runs those) when one is present."""
    cpu = (["reference"] if with_reference else []) + BACKENDS
    out = [pytest.param(b, "cpu", id=f"{b}-cpu") for b in cpu]
    return out + [pytest.param(b, "cuda", id=f"{b}-cuda", marks=pytest.mark.gpu) for b in GPU_BACKENDS]


TARGETS = _targets()
ALL_TARGETS = _targets(with_reference=True)
needs_cpu = pytest.mark.skipif("cpu" not in BACKENDS, reason="seer_kernels._C not built")
needs_triton = pytest.mark.skipif("triton" not in BACKENDS, reason="Triton backend unavailable")
FLOOR = 2e-6
# The Triton interpreter evaluates masked-off lanes too (inf - inf, log 0 there) and
# numpy warns about them; the stored results never contain those lanes.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _scores(b: int, k: int, dtype: torch.dtype = torch.float32, seed: int = 0, dim: int = 32) -> torch.Tensor:
    """SwAV-like cosine scores: unit embeddings against unit prototypes (spread ~ 1/sqrt(dim))."""
    gen = torch.Generator().manual_seed(seed)
    e = torch.nn.functional.normalize(torch.randn(b, dim, generator=gen, dtype=torch.float64), dim=1)
    p = torch.nn.functional.normalize(torch.randn(k, dim, generator=gen, dtype=torch.float64), dim=1)
    return (e @ p.t()).to(dtype)


def _check(codes: torch.Tensor, scores: torch.Tensor, eps: float, iters: int, what: str) -> None:
    oracle = reference.sinkhorn(scores.double(), eps, iters)
    same = reference.sinkhorn(scores, eps, iters)
    assert codes.dtype == torch.float32 and codes.shape == scores.shape, what
    assert_close_rule(codes, same, oracle, scores.dtype, floor=FLOOR, what=what)


def _rows_sum_to_one(codes: torch.Tensor, what: str) -> None:
    assert torch.isfinite(codes).all(), f"{what}: non-finite codes"
    err = (codes.double().sum(dim=1) - 1).abs().max().item()
    assert err <= 1e-5, f"{what}: rows sum to 1 within {err:.2e}"


# ------------------------------------------------------------------------ grid: cpu

# Small sizes, full product of the parameters: every branch (row tails, 8-row blocks,
# chunk merges, K below one vector, iterations 0/1/many) in every dtype.
SMALL = list(itertools.product((1, 7, 64), (1, 3, 257), (0, 1, 3, 10), (0.01, 0.5), DTYPES))
# The issue's sizes: each B, K, iterations, eps and dtype at least once.
LARGE = [
    (1, 3000, 3, 0.05, torch.float32),
    (1023, 3000, 3, 0.03, torch.float32),
    (1023, 3000, 10, 0.01, torch.float16),
    (4096, 3000, 3, 0.05, torch.float32),
    (4096, 3000, 1, 0.01, torch.bfloat16),
    (4096, 3, 10, 0.01, torch.float16),
    (4096, 1, 3, 0.5, torch.bfloat16),
    (1023, 3, 0, 0.03, torch.float32),
    (64, 16384, 10, 0.03, torch.float32),
    (7, 16384, 0, 0.05, torch.float32),
    (1023, 16384, 3, 0.01, torch.float32),
]


@needs_cpu
@pytest.mark.parametrize(("b", "k", "iters", "eps", "dtype"), SMALL)
def test_cpu_small_grid(b, k, iters, eps, dtype):
    s = _scores(b, k, dtype, seed=b * 31 + k)
    _check(
        sk.sinkhorn(s, epsilon=eps, iterations=iters, backend="cpu"),
        s,
        eps,
        iters,
        f"cpu {b}x{k} T={iters} eps={eps} {dtype}",
    )


@needs_cpu
@pytest.mark.parametrize(("b", "k", "iters", "eps", "dtype"), LARGE)
def test_cpu_issue_grid(b, k, iters, eps, dtype):
    s = _scores(b, k, dtype, seed=b + k)
    _check(
        sk.sinkhorn(s, epsilon=eps, iterations=iters, backend="cpu"),
        s,
        eps,
        iters,
        f"cpu {b}x{k} T={iters} eps={eps} {dtype}",
    )


@needs_cpu
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_cpu_lower_instruction_sets(capability):
    """The AVX2 and baseline kernel tables (ATEN_CPU_CAPABILITY picks them) on a few
    shapes with vector tails, in a fresh process."""
    script = """
        import torch, seer_kernels as sk
        from seer_kernels import reference
        from tests.tolerance import assert_close_rule
        print(torch.backends.cpu.get_cpu_capability())
        for b, k, it, eps, dt in [(7, 3, 3, 0.01, torch.float32), (64, 257, 10, 0.05, torch.float16),
                                  (33, 1000, 0, 0.03, torch.bfloat16), (9, 20, 1, 0.5, torch.float32)]:
            g = torch.Generator().manual_seed(b)
            s = (torch.randn(b, k, generator=g) * 0.3).to(dt)
            out = sk.sinkhorn(s, epsilon=eps, iterations=it, backend="cpu")
            assert_close_rule(out, reference.sinkhorn(s, eps, it), reference.sinkhorn(s.double(), eps, it),
                              dt, floor=2e-6, what=f"{b}x{k}")
        """
    run_with_capability(script, capability)


@needs_cpu
def test_cpu_threads_do_not_change_the_result():
    """Row chunks depend on B only, so the result is bit-identical for any thread count."""
    s = _scores(1023, 300, seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sk.sinkhorn(s, epsilon=0.05, iterations=3, backend="cpu")
        torch.set_num_threads(2)
        two = sk.sinkhorn(s, epsilon=0.05, iterations=3, backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


# --------------------------------------------------------------------- grid: triton

TRITON_GRID = [
    (1, 1, 1, 0.5, torch.float32),
    (5, 3000, 2, 0.01, torch.bfloat16),
    (33, 65, 4, 0.03, torch.bfloat16),
    (1, 100, 3, 0.05, torch.float16),
    (7, 3, 10, 0.01, torch.float32),
    (7, 100, 0, 0.03, torch.float16),
    (64, 3, 0, 0.01, torch.float32),
    (64, 100, 3, 0.01, torch.float32),
    (64, 257, 10, 0.05, torch.float16),
    (200, 33, 1, 0.03, torch.float32),
]


@needs_triton
@pytest.mark.parametrize(("b", "k", "iters", "eps", "dtype"), TRITON_GRID)
def test_triton_grid(b, k, iters, eps, dtype):
    s = _scores(b, k, dtype, seed=b * 7 + k)
    what = f"triton {b}x{k} T={iters} eps={eps} {dtype}"
    _check(sk.sinkhorn(s, epsilon=eps, iterations=iters, backend="triton"), s, eps, iters, what)


@needs_triton
@pytest.mark.parametrize(("b", "k", "iters"), [(7, 40, 3), (64, 33, 0), (20, 16, 10)])
def test_triton_wide_row_path(b, k, iters):
    """Rows wider than one register tile (forced here with a 16-column tile): the looped
    row-logsumexp path of the colstats and codes kernels."""
    s = _scores(b, k, seed=k)
    with torch.no_grad():
        out = SK.pipeline(s, 0.02, iters, 16)
    _check(out, s, 0.02, iters, f"triton wide {b}x{k} T={iters}")


@needs_triton
@pytest.mark.parametrize(
    ("a", "b", "k", "iters", "programs"), [(1, 40, 33, 3, 1), (2, 40, 70, 3, 7), (3, 9, 5, 4, 40)]
)
@pytest.mark.parametrize("max_one_tile", [16384, 16])
def test_triton_work_split(a, b, k, iters, programs, max_one_tile):
    """The phases split their work into items (crop x column tile, crop x row group, crop
    x row block) over however many programs the launcher asks for: one program doing
    everything, several, and more programs than items; whole and wide rows."""
    s = torch.stack([_scores(b, k, seed=30 + i) for i in range(a)])
    with torch.no_grad():
        out = SK.pipeline(s, 0.03, iters, max_one_tile, programs)
    for i in range(a):
        _check(
            out[i], s[i], 0.03, iters, f"triton split a={a} programs={programs} tile={max_one_tile} crop {i}"
        )


@needs_triton
@pytest.mark.parametrize(("a", "b", "k", "iters", "eps", "dtype"), [
    (1, 1, 1, 3, 0.5, torch.float32),
    (1, 7, 100, 0, 0.01, torch.float16),
    (2, 33, 257, 3, 0.01, torch.bfloat16),
    (1, 64, 3, 10, 0.03, torch.float32),
    (2, 20, 40, 1, 0.05, torch.float16),
])  # fmt: skip
@pytest.mark.parametrize("programs", [1, 3])
def test_triton_onchip_path(a, b, k, iters, eps, dtype, programs):
    """The one-launch path's phase bodies, its persistent grid striding over the items,
    each phase launched on its own (its compile-time switch for the interpreter, where a
    grid barrier would wait forever): against float64, crops, ragged sizes, bf16 loads."""
    s = torch.stack([_scores(b, k, dtype, seed=40 + i) for i in range(a)])
    out = SK.onchip_pipeline(s, eps, iters, programs, phased=True)
    for i in range(a):
        _check(out[i], s[i], eps, iters, f"triton onchip a={a} {b}x{k} T={iters} eps={eps} {dtype} crop {i}")
    with pytest.raises(RuntimeError, match="needs a GPU"):
        SK.onchip_pipeline(s, eps, iters, programs)


@needs_triton
def test_triton_codes_are_bitwise_reproducible():
    """The row passes add their column sums with integer atomics on a fixed-point scale,
    which are order-independent: the same call gives the same bits (on a GPU the programs
    finish in a different order each run)."""
    s = _scores(50, 40, seed=8)
    runs = [SK.pipeline(s, 0.05, 4, programs=5) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


@needs_triton
def test_triton_fixed_point_scale_bounds_every_sum():
    """Every pass's column sums total B (each row's softmax sums to 1): 2^F B + one
    rounding per group stays below 2^61, so sums never reach the poison bit (62)."""
    for b in (1, 2, 3, 4096, 4097, 1 << 20, (1 << 24) + 1):
        f = SK.fixed_point_scale(b)
        assert b * 2.0**f + b <= 2.0**61, b
        assert 2 * b * 2.0**f > 2.0**59, b  # and no coarser than it has to be


@needs_triton
@pytest.mark.parametrize(("groups", "k"), [(1, 1), (37, 70), (70, 129)])
def test_triton_sum_groups(groups, k):
    """The normalized colstats op adds its groups' partial rows GROUP_BLOCK groups per
    step, more groups than one step and an empty group included, against float64."""
    gen = torch.Generator().manual_seed(groups * 1000 + k)
    partial = torch.rand(2 * groups, k, generator=gen, dtype=torch.float64) * 5
    partial[groups // 2, : k // 2] = 0.0
    out = torch.empty(2, 2, k)
    SK.wrap_triton(SK._sum_groups_kernel)[(-(-k // 64), 2)](
        partial.float(), groups, k, out, BLOCK=64, GROUP_BLOCK=32
    )
    want = partial.float().double().view(2, groups, k).sum(1)
    torch.testing.assert_close(out[:, 1].double(), want, rtol=1e-6, atol=1e-6)
    assert (out[:, 0] == 0).all()


# ---------------------------------------------------------------------- grid: GPU

GPU_GRID = [
    (1, 3000, 3, 0.05, torch.float32),
    (7, 3, 10, 0.01, torch.float16),
    (64, 16384, 10, 0.03, torch.float32),
    (1023, 3000, 3, 0.03, torch.bfloat16),
    (4096, 3000, 3, 0.05, torch.float32),
    (4096, 3, 0, 0.01, torch.float16),
    (1023, 16384, 1, 0.01, torch.float32),
    (7, 16384, 0, 0.05, torch.bfloat16),
    (4096, 1, 3, 0.5, torch.float32),
    (64, 257, 10, 0.5, torch.float16),
    (16384, 3000, 3, 0.05, torch.bfloat16),
]


def _needs_gpu_backend(backend: str) -> None:
    if backend not in GPU_BACKENDS:
        pytest.skip(f"backend {backend!r} is not available on this GPU")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", _registry.op("sinkhorn").gpu_backends())
@pytest.mark.parametrize(("b", "k", "iters", "eps", "dtype"), GPU_GRID)
def test_gpu_grid(backend, b, k, iters, eps, dtype):
    _needs_gpu_backend(backend)
    s = _scores(b, k, dtype, seed=b + k)
    codes = sk.sinkhorn(s.cuda(), epsilon=eps, iterations=iters, backend=backend).cpu()
    _check(codes, s, eps, iters, f"{backend} {b}x{k} T={iters} eps={eps} {dtype}")


@pytest.mark.gpu
@pytest.mark.parametrize("iters", [0, 3])
def test_gpu_triton_wide_row_path(iters):
    """Rows wider than the register tile (forced: 1024 columns) on the GPU."""
    _needs_gpu_backend("triton")
    s = _scores(300, 3000, seed=5)
    with torch.no_grad():
        out = SK.pipeline(s.cuda(), 0.03, iters, 1024).cpu()
    _check(out, s, 0.03, iters, f"triton wide T={iters}")


@pytest.mark.gpu
@pytest.mark.parametrize(("a", "b", "k", "iters"), [(1, 256, 3000, 3), (2, 3904, 3000, 3), (1, 32, 16000, 10),
                                                    (1, 7, 3, 0), (2, 64, 257, 1)])  # fmt: skip
def test_gpu_triton_onchip_path(a, b, k, iters):
    """The one-launch path on a GPU: every phase in one cooperative launch, grid barriers
    between them, against float64; and both Triton paths bitwise reproducible (the row
    passes' fixed-point atomics land in a different order each run)."""
    _needs_gpu_backend("triton")
    s = torch.stack([_scores(b, k, seed=50 + i) for i in range(a)])
    one = SK.onchip_pipeline(s.cuda(), 0.05, iters)
    for i in range(a):
        _check(one[i].cpu(), s[i], 0.05, iters, f"triton onchip a={a} {b}x{k} T={iters} crop {i}")
    assert torch.equal(one, SK.onchip_pipeline(s.cuda(), 0.05, iters))
    passes = SK.pipeline(s.cuda(), 0.05, iters)
    assert torch.equal(passes, SK.pipeline(s.cuda(), 0.05, iters))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", _registry.op("sinkhorn").gpu_backends())
def test_gpu_no_host_sync(backend):
    """The fused op only launches kernels: no host synchronization anywhere in it."""
    _needs_gpu_backend(backend)
    s = _scores(512, 300, seed=1).cuda()
    sk.sinkhorn(s, epsilon=0.05, iterations=3, backend=backend)  # compile / load outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sk.sinkhorn(s, epsilon=0.05, iterations=3, backend=backend)
        sk.sinkhorn(s, epsilon=0.05, iterations=0, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------- building blocks (distributed path)


def _blocks(backend: str):
    if backend == "triton":
        return torch.ops.seer_kernels.sinkhorn_colstats_triton, torch.ops.seer_kernels.sinkhorn_codes_triton
    return torch.ops.seer_kernels.sinkhorn_colstats, torch.ops.seer_kernels.sinkhorn_codes


@pytest.mark.parametrize(("backend", "device"), TARGETS)
@pytest.mark.parametrize("normalize", [False, True])
def test_building_blocks_take_crops(backend, device, normalize):
    """(A, B, K) scores with (A, K) log_u: each crop's statistics and codes, as one crop
    at a time gives them (the distributed path's one collective per half-iteration)."""
    if backend not in sinkhorn_module._CROPS_IN_ONE_CALL:
        pytest.skip(f"{backend}'s kernels take one crop a call (the wrapper loops over crops)")
    colstats, codes = _blocks(backend)
    s = torch.stack([_scores(9, 17, seed=60 + i) for i in range(2)])
    log_u = torch.randn(2, 17, generator=torch.Generator().manual_seed(3)) * 3
    stats = colstats(s.to(device), log_u.to(device), 0.05, normalize).cpu()
    out = codes(s.to(device), log_u.to(device), 0.05, normalize).cpu()
    assert stats.shape == (2, 2, 17) and out.shape == (2, 9, 17)
    for i in range(2):
        one = colstats(s[i].to(device), log_u[i].to(device), 0.05, normalize).cpu()
        torch.testing.assert_close(stats[i], one, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out[i], codes(s[i].to(device), log_u[i].to(device), 0.05, normalize).cpu())


@pytest.mark.parametrize(("backend", "device"), TARGETS)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(("b", "k"), [(1, 1), (9, 17), (70, 33)])
def test_building_blocks_match_float64(backend, device, normalize, b, k):
    """colstats: shift + log(sum) is the column logsumexp of x; codes: softmax/exp of x,
    x = scores / eps + log_u (minus the row logsumexp when normalize)."""
    colstats, codes = _blocks(backend)
    s = _scores(b, k, seed=b)
    log_u = torch.randn(k, generator=torch.Generator().manual_seed(k), dtype=torch.float64) * 3
    x = s.double() / 0.05 + log_u
    if normalize:
        x = torch.log_softmax(x, dim=1)
    stats = colstats(s.to(device), log_u.float().to(device), 0.05, normalize).cpu()
    assert stats.shape == (2, k) and stats.dtype == torch.float32
    lse = stats[0].double() + stats[1].double().log()
    torch.testing.assert_close(lse, torch.logsumexp(x, dim=0), rtol=1e-5, atol=1e-5)
    out = codes(s.to(device), log_u.float().to(device), 0.05, normalize).cpu()
    torch.testing.assert_close(out.double(), x.exp(), rtol=2e-5, atol=1e-6)


# ------------------------------------------------------------------- adversarial


def _adversarial() -> dict[str, tuple[torch.Tensor, float]]:
    k = 50
    cos = _scores(40, k, seed=11)
    exact_one = cos.clone()
    exact_one[3, 7] = 1.0
    one_hot = torch.full((40, k), -0.2)
    one_hot[torch.arange(40), torch.arange(40) % k] = 1.0
    signs = torch.randint(0, 2, (40, k), generator=torch.Generator().manual_seed(5)).float() * 2 - 1
    return {
        "cosine 1.0 at eps 0.01": (exact_one, 0.01),
        "all equal": (torch.full((40, k), 0.3), 0.01),
        "one-hot-like": (one_hot, 0.01),
        "-1/1 extremes": (signs, 0.01),
        "fp16 at eps 0.05": (cos.half() * 3, 0.05),
    }


@pytest.mark.parametrize(("backend", "device"), TARGETS)
@pytest.mark.parametrize("case", list(_adversarial()))
def test_adversarial_inputs(backend, device, case):
    """Where plain SwAV code overflows or underflows, every backend stays finite, its rows
    sum to 1, and it matches float64."""
    s, eps = _adversarial()[case]
    for iters in (1, 3):
        codes = sk.sinkhorn(s.to(device), epsilon=eps, iterations=iters, backend=backend).cpu()
        _rows_sum_to_one(codes, f"{backend} {case} T={iters}")
        _check(codes, s, eps, iters, f"{backend} {case} T={iters}")


@needs_cpu
@pytest.mark.parametrize("iters", [1, 2, 3, 10])
@pytest.mark.parametrize("eps", [0.01, 0.003])
@pytest.mark.parametrize(("b", "k"), [(20, 5), (300, 37)])
def test_cpu_rows_far_below_their_columns(b, k, eps, iters):
    """Rows whose scores are all far below their columns' maxima: at these eps the
    exp-domain E = exp(L - column max) of such a row underflows to 0 (the first row, a row
    in a middle chunk) or nearly (the last row, a ramp), so the kernel takes their
    softmax from the scores in the log domain; the codes still match float64."""
    s = torch.rand(b, k, generator=torch.Generator().manual_seed(b + k)) * 0.5 + 0.5
    s[0] = -1.0
    s[b // 2, : k // 2 + 1] = -1.0
    s[b // 2, k // 2 + 1 :] = -0.9
    s[-1] = torch.linspace(-1, 1, k)
    codes = sk.sinkhorn(s, epsilon=eps, iterations=iters, backend="cpu")
    _rows_sum_to_one(codes, f"{b}x{k} eps={eps} T={iters}")
    _check(codes, s, eps, iters, f"{b}x{k} eps={eps} T={iters}")


def test_baseline_breaks_where_the_fused_op_does_not():
    """The premise of the adversarial cases: plain SwAV returns NaN on them."""
    s, eps = _adversarial()["cosine 1.0 at eps 0.01"]
    assert torch.isnan(reference.swav_sinkhorn_baseline(s, eps, 3)).any()
    s, eps = _adversarial()["fp16 at eps 0.05"]
    assert torch.isnan(reference.swav_sinkhorn_baseline(s, eps, 3)).any()


# ------------------------------------------------------------------ NaN/Inf policy


@pytest.mark.parametrize(("backend", "device"), ALL_TARGETS)
@pytest.mark.parametrize("iters", [0, 1, 3])
def test_nan_propagates(backend, device, iters):
    """A NaN score poisons its column statistic, so every code is NaN (never a finite
    wrong answer), the same on every backend."""
    s = _scores(9, 20, seed=2)
    s[4, 5] = float("nan")
    codes = sk.sinkhorn(s.to(device), epsilon=0.05, iterations=iters, backend=backend)
    assert torch.isnan(codes).all()


@pytest.mark.parametrize(("backend", "device"), ALL_TARGETS)
@pytest.mark.parametrize("iters", [0, 1, 3])
def test_inf_gives_nan(backend, device, iters):
    """+inf makes inf - inf appear: NaN where the reference has NaN, never all finite."""
    s = _scores(9, 20, seed=2)
    s[4, 5] = float("inf")
    codes = sk.sinkhorn(s.to(device), epsilon=0.05, iterations=iters, backend=backend).cpu()
    expected = reference.sinkhorn(s, 0.05, iters)
    assert torch.isnan(codes).any()
    assert torch.equal(torch.isnan(codes), torch.isnan(expected))


@pytest.mark.parametrize(("backend", "device"), ALL_TARGETS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_raises(backend, device, bad):
    s = _scores(9, 20, seed=2)
    s[1, 2] = bad
    with pytest.raises(ValueError, match="scores contains 1 non-finite"):
        sk.sinkhorn(s.to(device), epsilon=0.05, iterations=3, backend=backend, check_finite=True)


# ---------------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_rows() -> tuple[int, ...]:
    return (5, 12)  # uneven on purpose


def _distributed_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        full = _scores(sum(_rank_rows()), 23, seed=9)
        start = sum(_rank_rows()[:rank])
        mine = full[start : start + _rank_rows()[rank]]
        # Triton runs interpreted here (TRITON_INTERPRET is inherited from the test process).
        backends = [
            b
            for b in ("reference", "cpu", "triton")
            if b in _backend.available_backends("cpu", op="sinkhorn")
        ]
        results = {}
        crops = torch.stack([full, _scores(sum(_rank_rows()), 23, seed=10)])[
            :, start : start + _rank_rows()[rank]
        ]
        for backend, iters in itertools.product(backends, (0, 1, 3)):
            results[(backend, iters)] = sk.sinkhorn(
                mine, epsilon=0.03, iterations=iters, process_group="world", backend=backend
            )
            # (A, B, K): each crop its own problem, its rows spread over the ranks.
            results[(backend, iters, "crops")] = sk.sinkhorn(
                crops, epsilon=0.03, iterations=iters, process_group="world", backend=backend
            )
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_two_gloo_ranks(tmp_path):
    """Two processes with uneven batches: each rank's codes equal the single-process
    codes of its rows of the concatenated scores (reference and cpu)."""
    port = _free_port()
    ctx = mp.start_processes(
        _distributed_worker, args=(2, port, str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 150
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                raise AssertionError("distributed workers timed out")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
    full = _scores(sum(_rank_rows()), 23, seed=9)
    crops = torch.stack([full, _scores(sum(_rank_rows()), 23, seed=10)])
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key in ranks[0]:
        backend, iters = key[:2]
        expected = sk.sinkhorn(
            crops if len(key) == 3 else full, epsilon=0.03, iterations=iters, backend=backend
        )
        got = torch.cat([ranks[0][key], ranks[1][key]], dim=-2)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-6, msg=lambda m, key=key: f"{key}: {m}")
    assert len(ranks[0]) >= 6
    assert {key[0] for key in ranks[0]} == set(_targets_in_workers()), ranks[0].keys()


def _targets_in_workers() -> list[str]:
    return [
        b for b in ("reference", "cpu", "triton") if b in _backend.available_backends("cpu", op="sinkhorn")
    ]


# ------------------------------------------------------------------ (A, B, K) crops


@pytest.mark.parametrize(("backend", "device"), ALL_TARGETS)
@pytest.mark.parametrize(
    ("a", "b", "k", "iters"), [(1, 7, 5, 3), (2, 9, 13, 0), (2, 33, 257, 3), (3, 5, 3, 10)]
)
def test_crops_are_independent_problems(backend, device, a, b, k, iters):
    """(A, B, K) scores give each crop's (B, K) codes, as A separate calls would; the
    oracle of each crop is the float64 reference on that crop alone."""
    scores = torch.stack([_scores(b, k, seed=20 + i) for i in range(a)])
    codes = sk.sinkhorn(scores.to(device), epsilon=0.05, iterations=iters, backend=backend).cpu()
    assert codes.shape == scores.shape and codes.dtype == torch.float32
    for i in range(a):
        _check(codes[i], scores[i], 0.05, iters, f"{backend} crop {i} of {a}, {b}x{k} T={iters}")
    oracle = reference.sinkhorn(scores.double(), 0.05, iters)
    torch.testing.assert_close(
        oracle, torch.stack([reference.sinkhorn(s.double(), 0.05, iters) for s in scores])
    )


@needs_cpu
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(("a", "b", "k"), [(1, 9, 17), (2, 70, 33), (3, 5, 1)])
def test_cpu_building_blocks_take_crops(a, b, k, normalize):
    """The CPU schema ops on (A, B, K) scores and (A, K) log_u: colstats (A, 2, K) and
    codes (A, B, K), each crop against float64 on its own."""
    ops = torch.ops.seer_kernels
    s = torch.stack([_scores(b, k, seed=b + i) for i in range(a)])
    log_u = torch.randn(a, k, generator=torch.Generator().manual_seed(k), dtype=torch.float64) * 3
    x = s.double() / 0.05 + log_u[:, None, :]
    if normalize:
        x = torch.log_softmax(x, dim=-1)
    stats = ops.sinkhorn_colstats(s, log_u.float(), 0.05, normalize)
    assert stats.shape == (a, 2, k) and stats.dtype == torch.float32
    lse = stats[:, 0].double() + stats[:, 1].double().log()
    torch.testing.assert_close(lse, torch.logsumexp(x, dim=1), rtol=1e-5, atol=1e-5)
    out = ops.sinkhorn_codes(s, log_u.float(), 0.05, normalize)
    assert out.shape == (a, b, k) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), x.exp(), rtol=2e-5, atol=1e-6)


def _crop_cases() -> dict[str, torch.Tensor]:
    """(A, B, K) scores whose crops take different paths: plain cosines, a crop with rows
    far below their columns at eps 0.01 (log-domain rows), one with a NaN (its passes
    after the first in the log domain), and B not a multiple of a row chunk."""
    far = torch.rand(300, 37, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.5
    far[0] = -1.0
    nan = _scores(300, 37, seed=2)
    nan[4, 5] = float("nan")
    return {
        "cosines": torch.stack([_scores(1023, 300, seed=i) for i in range(2)]),
        "far rows": torch.stack([_scores(300, 37, seed=3), far]),
        "nan crop": torch.stack([nan, _scores(300, 37, seed=4), nan]),
        "small": torch.stack([_scores(7, 3, seed=i) for i in range(4)]),
    }


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("iters", [0, 1, 3])
@pytest.mark.parametrize("case", list(_crop_cases()))
def test_cpu_crops_in_one_call_equal_per_crop_calls(case, iters, dtype):
    """Each crop's chunks depend on B only and every chunk, merge and fallback decision is
    the crop's own, so (A, B, K) in one call is bitwise the A separate calls, with any
    thread count; the building blocks likewise."""
    scores = _crop_cases()[case].to(dtype)
    ops = torch.ops.seer_kernels
    eps = 0.01 if case == "far rows" else 0.05
    separate = torch.stack([ops.sinkhorn(s, eps, iters) for s in scores])
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            together = ops.sinkhorn(scores, eps, iters)
            assert torch.equal(together.isnan(), separate.isnan()), f"{threads} threads"
            assert torch.equal(together.nan_to_num(), separate.nan_to_num()), f"{threads} threads"
    finally:
        torch.set_num_threads(before)
    log_u = torch.randn(scores.shape[0], scores.shape[2], generator=torch.Generator().manual_seed(0))
    for normalize in (False, True):
        for op in (ops.sinkhorn_colstats, ops.sinkhorn_codes):
            got = op(scores, log_u, eps, normalize)
            want = torch.stack([op(s, lu, eps, normalize) for s, lu in zip(scores, log_u, strict=True)])
            assert torch.equal(got.nan_to_num(), want.nan_to_num()) and torch.equal(got.isnan(), want.isnan())


def test_crops_bad_shape():
    with pytest.raises(ValueError, match=r"scores must not be empty, got \(A, B, K\) shape \(2, 0, 3\)"):
        sk.sinkhorn(torch.zeros(2, 0, 3))
    with pytest.raises(
        ValueError, match=r"scores must be a 2-D \(B, K\) or 3-D \(A, B, K\) tensor.*\(1, 2, 3, 4\)"
    ):
        sk.sinkhorn(torch.zeros(1, 2, 3, 4))


# ------------------------------------------------------------- compile and opcheck


@needs_cpu
def test_torch_compile_fullgraph_cpu():
    torch._dynamo.reset()

    def fn(s):
        return sk.sinkhorn(s, epsilon=0.05, iterations=3, backend="cpu")

    s = _scores(64, 100, seed=4)
    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(s), fn(s), rtol=0, atol=0)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_cpp_ops(dtype):
    s = _scores(19, 37, dtype, seed=6)
    log_u = torch.randn(37)
    ops = torch.ops.seer_kernels
    crops = torch.stack([s, _scores(19, 37, dtype, seed=7)])  # (A, B, K), (A, K) log_u
    crop_log_u = torch.stack([log_u, -log_u])
    for scores, lu in ((s, log_u), (crops, crop_log_u)):
        torch.library.opcheck(ops.sinkhorn.default, (scores, 0.05, 3))
        torch.library.opcheck(ops.sinkhorn.default, (scores, 0.05, 0))
        for normalize in (False, True):
            torch.library.opcheck(ops.sinkhorn_colstats.default, (scores, lu, 0.05, normalize))
            torch.library.opcheck(ops.sinkhorn_codes.default, (scores, lu, 0.05, normalize))


@needs_triton
def test_opcheck_triton_ops():
    """Under the interpreter only the schema check runs: the interpreter executes kernels
    on the fake tensors of the other checks (they run on a GPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    utils = (
        ("test_schema",)
        if device == "cpu"
        else ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    )
    s = _scores(9, 17, seed=6).to(device)
    log_u = torch.randn(17, device=device)
    ops = torch.ops.seer_kernels
    torch.library.opcheck(ops.sinkhorn_triton.default, (s, 0.05, 3), test_utils=utils)
    for op in (ops.sinkhorn_colstats_triton, ops.sinkhorn_codes_triton):
        torch.library.opcheck(op.default, (s, log_u, 0.05, True), test_utils=utils)


# -------------------------------------------------------- layout, gradients, errors


@pytest.mark.parametrize(("backend", "device"), TARGETS)
def test_non_contiguous_input(backend, device):
    s = _scores(30, 21, seed=8).to(device)
    strided = s.t().contiguous().t()
    assert not strided.is_contiguous()
    torch.testing.assert_close(
        sk.sinkhorn(strided, epsilon=0.05, iterations=3, backend=backend),
        sk.sinkhorn(s, epsilon=0.05, iterations=3, backend=backend),
    )


@pytest.mark.parametrize(("backend", "device"), ALL_TARGETS)
def test_codes_carry_no_gradient(backend, device):
    """SwAV computes codes under no_grad; the op detaches its input, so the codes are
    leaves without grad_fn and backward through them is an error, by design."""
    s = _scores(8, 5, seed=1).to(device).requires_grad_()
    codes = sk.sinkhorn(s, epsilon=0.05, iterations=3, backend=backend)
    assert not codes.requires_grad and codes.grad_fn is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        codes.sum().backward()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"scores": torch.zeros(4)},
            ValueError,
            r"scores must be a 2-D \(B, K\) or 3-D \(A, B, K\) tensor, got shape \(4,\)",
        ),
        ({"scores": torch.zeros(4, 3, dtype=torch.int64)}, TypeError, "scores must be a floating-point"),
        ({"scores": [[0.0]]}, TypeError, "scores must be a torch.Tensor, got list"),
        ({"scores": torch.zeros(0, 3)}, ValueError, "scores must not be empty"),
        ({"epsilon": 0.0}, ValueError, "epsilon must be a finite number > 0, got 0.0"),
        ({"epsilon": float("nan")}, ValueError, "epsilon must be a finite number > 0"),
        ({"epsilon": True}, TypeError, "epsilon must be a real number, got bool"),
        ({"iterations": -1}, ValueError, "iterations must be >= 0, got -1"),
        ({"iterations": 1.5}, TypeError, "iterations must be an int, got float"),
        ({"backend": "fast"}, ValueError, "backend must be one of"),
        ({"process_group": "world"}, ValueError, "process_group was given but torch.distributed is not"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"scores": torch.zeros(4, 3), "epsilon": 0.05, "iterations": 3} | kwargs
    with pytest.raises(error, match=match):
        sk.sinkhorn(**args)


@pytest.mark.parametrize(("backend", "device"), TARGETS)
def test_float64_needs_the_reference(backend, device):
    with pytest.raises(
        TypeError, match=f"scores must be float32, float16 or bfloat16 for backend '{backend}'"
    ):
        sk.sinkhorn(torch.zeros(4, 3, dtype=torch.float64, device=device), backend=backend)


@needs_cpu
def test_cpp_op_argument_errors():
    ops = torch.ops.seer_kernels
    with pytest.raises(RuntimeError, match=r"log_u must have shape \(3,\)"):
        ops.sinkhorn_codes(torch.zeros(4, 3), torch.zeros(2), 0.05, True)
    with pytest.raises(RuntimeError, match="epsilon must be > 0"):
        ops.sinkhorn(torch.zeros(4, 3), -1.0, 3)
    with pytest.raises(RuntimeError, match="scores must be float32, float16 or bfloat16"):
        ops.sinkhorn(torch.zeros(4, 3, dtype=torch.float64), 0.05, 3)
    with pytest.raises(
        RuntimeError, match=r"scores must be 2-D \(B, K\) or 3-D \(A, B, K\), got shape \[1, 2, 4, 3\]"
    ):
        ops.sinkhorn(torch.zeros(1, 2, 4, 3), 0.05, 3)
    with pytest.raises(
        RuntimeError, match=r"log_u must have shape \(A, K\) = \(2, 3\) for \(A, B, K\) scores"
    ):
        ops.sinkhorn_codes(torch.zeros(2, 4, 3), torch.zeros(3), 0.05, True)
    with pytest.raises(RuntimeError, match=r"log_u must have shape \(A, K\) = \(2, 3\)"):
        ops.sinkhorn_colstats(torch.zeros(2, 4, 3), torch.zeros(1, 3), 0.05, True)


@pytest.mark.gpu
def test_cuda_kernels_reject_crops():
    """The CUDA kernels take one crop per call (the public function loops over crops for
    them): a direct call with (A, B, K) scores says so."""
    if not torch.cuda.is_available() or "cuda" not in GPU_BACKENDS:
        pytest.skip("needs the CUDA kernels and a GPU")
    ops = torch.ops.seer_kernels
    s = torch.zeros(2, 4, 3, device="cuda")
    for call in (
        lambda: ops.sinkhorn(s, 0.05, 3),
        lambda: ops.sinkhorn_colstats(s, torch.zeros(2, 3, device="cuda"), 0.05, True),
        lambda: ops.sinkhorn_codes(s, torch.zeros(2, 3, device="cuda"), 0.05, True),
    ):
        with pytest.raises(RuntimeError, match="take 2-D \\(B, K\\) scores, one crop per call"):
            call()


@pytest.mark.parametrize(
    "backend", [b for b in sk.available_backends("cpu", op="sinkhorn") if b != "reference"]
)
@pytest.mark.parametrize("b", [1, 2, 9])
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_unpopular_prototype_column_below_exp_range(backend, b, iterations):
    """A prototype every sample scores at -1 with eps 0.01: its column's max logit is
    -100, below fp32 exp's range, so rescaling the empty running sum by exp(0 + 100)
    must not turn 0 into 0 * inf = NaN (a regression seen with B = 1)."""
    g = torch.Generator().manual_seed(b)
    scores = torch.rand(b, 6, generator=g) * 2 - 1
    scores[:, 2] = -1.0
    out = sk.sinkhorn(scores, epsilon=0.01, iterations=iterations, backend=backend)
    oracle = reference.sinkhorn(scores.double(), 0.01, iterations)
    assert torch.isfinite(out).all()
    assert (out.double() - oracle).abs().max() <= 2e-5 * max(1.0, oracle.abs().max().item())

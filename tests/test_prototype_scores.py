"""prototype_scores: every available backend against the float64 oracle, forward and
both gradients.

Tolerance rule (tests/tolerance.py): max |fused - oracle64| <= 2 x max |reference at the
input dtype - oracle64| + a per-dtype floor, for the scores and for both gradients.
The Triton backend runs under TRITON_INTERPRET=1 here (tests/conftest.py): its shapes are
kept small and bf16 is skipped (the interpreter has no bf16 arithmetic).
"""

from __future__ import annotations

import itertools

import pytest
import torch

import seer_kernels as sk
from seer_kernels import _backend, _registry, reference
from tests.tolerance import assert_close_rule

BACKENDS = [b for b in _backend.available_backends("cpu", op="prototype_scores") if b != "reference"]
needs_cpu = pytest.mark.skipif("cpu" not in BACKENDS, reason="seer_kernels._C not built")
needs_triton = pytest.mark.skipif("triton" not in BACKENDS, reason="Triton backend unavailable")

NS, KS, DS = (1, 7, 64, 1023), (1, 3, 3000), (1, 3, 128, 256)
# Every N, K and D value at least once, odd sizes mixed with tile-sized ones.
COVER = [
    (1, 1, 1),
    (7, 3, 3),
    (64, 3, 128),
    (1, 3000, 3),
    (7, 3000, 256),
    (1023, 3, 256),
    (1023, 1, 1),
    (64, 3000, 3),
]
# D beyond one 256-wide tile: the Triton backward's tiled-D + finishing-kernel path.
WIDE = [(7, 200, 320)]
HALF = (torch.float16, torch.bfloat16)


def _inputs(n: int, k: int, d: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=gen, dtype=torch.float64)
    p = torch.randn(k, d, generator=gen, dtype=torch.float64)
    g = torch.randn(n, k, generator=gen, dtype=torch.float64)
    return e.to(dtype), p.to(dtype), g.to(dtype)


def _run(fn, e, p, g):
    """Scores and both gradients of fn(e, p) against upstream gradient g."""
    e = e.detach().clone().requires_grad_()
    p = p.detach().clone().requires_grad_()
    scores = fn(e, p)
    scores.backward(g)
    return scores.detach(), e.grad, p.grad


def _check(backend: str, e, p, g, normalize: bool, what: str) -> None:
    """The tolerance rule on scores, d_embeddings and d_prototypes."""
    dtype = e.dtype
    ours = _run(lambda a, b: sk.prototype_scores(a, b, normalize=normalize, backend=backend), e, p, g)
    same = _run(lambda a, b: reference.prototype_scores(a, b, normalize), e, p, g)
    oracle = _run(
        lambda a, b: reference.prototype_scores(a, b, normalize), e.double(), p.double(), g.double()
    )
    assert ours[0].dtype == dtype
    for name, x, s, o in zip(
        ("scores", "grad_embeddings", "grad_prototypes"), ours, same, oracle, strict=True
    ):
        assert x.dtype == dtype, f"{what} {name}: dtype {x.dtype}"
        assert_close_rule(x, s, o, dtype, what=f"{what} {name}")


# ----------------------------------------------------------------------------- grids


@needs_cpu
@pytest.mark.parametrize("n,k,d", list(itertools.product(NS, KS, DS)))
def test_cpu_fp32_full_grid(n, k, d):
    e, p, g = _inputs(n, k, d, torch.float32)
    _check("cpu", e, p, g, True, f"cpu fp32 {(n, k, d)}")


@needs_cpu
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("n,k,d", COVER)
def test_cpu_cover(n, k, d, dtype, normalize):
    e, p, g = _inputs(n, k, d, dtype, seed=1)
    _check("cpu", e, p, g, normalize, f"cpu {dtype} normalize={normalize} {(n, k, d)}")


@needs_triton
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,k,d", COVER + WIDE)
def test_triton_cover(n, k, d, dtype, normalize):
    if not normalize and (n, k, d) not in [(7, 3, 3), (7, 3000, 256), (1023, 3, 256), *WIDE]:
        pytest.skip("normalize=False: a subset is enough (same kernels, fewer epilogue steps)")
    e, p, g = _inputs(n, k, d, dtype, seed=2)
    _check("triton", e, p, g, normalize, f"triton {dtype} normalize={normalize} {(n, k, d)}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_matches_oracle(backend):
    e, p, g = _inputs(7, 3000, 128, torch.float64, seed=3)
    _check(backend, e, p, g, True, f"{backend} fp64")


# ------------------------------------------------------------------------- gradcheck


@needs_cpu
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_cpu(normalize):
    e, p, _ = _inputs(5, 4, 6, torch.float64, seed=4)
    e[1] *= 1e-3  # a short row: the projection matters more
    e.requires_grad_()
    p.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: sk.prototype_scores(a, b, normalize=normalize, backend="cpu"), (e, p)
    )


@needs_triton
def test_gradcheck_triton():
    e, p, _ = _inputs(5, 4, 6, torch.float64, seed=5)
    e.requires_grad_()
    p.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: sk.prototype_scores(a, b, backend="triton"), (e, p))


# -------------------------------------------------------------------------- extremes


def _extreme_inputs(dtype: torch.dtype):
    """Zero rows in both operands, a row shorter than eps (fp32/fp64 only: half
    precision flushes it to zero anyway) and a row of huge entries."""
    e, p, g = _inputs(9, 6, 16, torch.float64, seed=6)
    e[0] = 0
    e[5] = 0
    p[2] = 0
    if dtype in (torch.float32, torch.float64):
        e[3] = 1e-14 * torch.arange(16, dtype=torch.float64)  # ||e[3]|| < 1e-12: the clamped branch
    e[4] *= 1e3 if dtype == torch.float16 else 1e15
    return e.to(dtype), p.to(dtype), g.to(dtype)


def _assert_matches_oracle(
    x: torch.Tensor, oracle: torch.Tensor, rtol: float, atol: float, what: str
) -> None:
    assert torch.isfinite(x).all(), f"{what}: non-finite values"
    err = (x.double() - oracle).abs()
    bound = atol + rtol * oracle.abs()
    assert (err <= bound).all(), f"{what}: error {err.max():.3e} (worst at {int((err - bound).argmax())})"


RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


# fp16 zero-row gradients overflow to inf by design (see the docstring); numpy warns.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *HALF])
@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_and_extreme_rows(backend, dtype):
    """Zero rows give zero scores (finite: the eps keeps them so, where the fp16
    reference divides 0 by an eps that rounds to 0 and returns NaN) and, like every
    other row, match float64. Gradients of zero rows are (G p_hat) / eps, about 1e13:
    beyond fp16's range, so fp16 gradients are checked on the other rows only."""
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bf16")
    e, p, g = _extreme_inputs(dtype)
    ours = _run(lambda a, b: sk.prototype_scores(a, b, backend=backend), e, p, g)
    oracle = _run(lambda a, b: reference.prototype_scores(a, b), e.double(), p.double(), g.double())
    rtol = RTOL[dtype]
    assert (ours[0][[0, 5]] == 0).all() and (ours[0][:, 2] == 0).all()
    _assert_matches_oracle(ours[0], oracle[0], rtol, rtol, f"{backend} {dtype} scores")
    zero_rows = {"grad_embeddings": [0, 5], "grad_prototypes": [2]}
    for name, x, o in (("grad_embeddings", ours[1], oracle[1]), ("grad_prototypes", ours[2], oracle[2])):
        if dtype == torch.float16:
            # Inf exactly where the true gradient exceeds fp16's range; never NaN.
            assert torch.equal(torch.isinf(x), o.abs() > torch.finfo(dtype).max), f"{backend} {name}"
            keep = [r for r in range(x.shape[0]) if r not in zero_rows[name]]
            x, o = x[keep], o[keep]
        # Relative to each row's scale: the clamped rows' gradients are ~1e12 x the others.
        scale = o.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
        _assert_matches_oracle(x.double() / scale, o / scale, 0.0, 4 * rtol, f"{backend} {dtype} {name}")


# ---------------------------------------------------------------- layouts and dtypes


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_and_grad(backend):
    """Transposed embeddings, strided prototypes and the stride-0 gradient of a sum
    give what contiguous inputs give."""
    e, p, _ = _inputs(37, 50, 24, torch.float32, seed=7)
    e_t = e.t().contiguous().t()  # column-major (N, D)
    p_s = torch.stack([p, torch.zeros_like(p)], dim=2).flatten(1)[:, ::2]  # stride 2 along D
    assert not e_t.is_contiguous() and not p_s.is_contiguous()
    ones = torch.ones(37, 50).expand(37, 50)
    ref = _run(lambda a, b: sk.prototype_scores(a, b, backend=backend), e, p, ones.contiguous())
    got = _run(lambda a, b: sk.prototype_scores(a, b, backend=backend), e_t, p_s, ones)
    for r, x in zip(ref, got, strict=True):
        torch.testing.assert_close(x, r, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_rows(backend):
    e, p = torch.randn(0, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    s = sk.prototype_scores(e, p, backend=backend)
    assert s.shape == (0, 5)
    s.sum().backward()
    assert e.grad.shape == (0, 8) and (p.grad == 0).all()


@needs_cpu
def test_mixed_dtypes_promote_and_autocast():
    e, p, _ = _inputs(7, 3, 16, torch.float32, seed=8)
    assert sk.prototype_scores(e.half(), p, backend="cpu").dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = sk.prototype_scores(e, p, backend="cpu")
    assert s.dtype == torch.bfloat16
    torch.testing.assert_close(s.float(), reference.prototype_scores(e, p), rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------ op checks and compile


@needs_cpu
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_cpp_ops(normalize, dtype):
    e, p, g = _inputs(7, 5, 12, dtype, seed=9)
    ops = torch.ops.seer_kernels
    torch.library.opcheck(ops.prototype_scores.default, (e.requires_grad_(), p.requires_grad_(), normalize))
    _, rn_e, rn_p = ops.prototype_scores(e.detach(), p.detach(), normalize)
    torch.library.opcheck(
        ops.prototype_scores_backward.default, (g, e.detach(), p.detach(), rn_e, rn_p, normalize)
    )


@needs_triton
def test_opcheck_triton_ops():
    """Under the interpreter the AOT-dispatch check cannot run the op (wrap_triton hands
    back the bare interpreted kernel, which cannot take functional tensors): it runs in
    test_gpu_compile_and_opcheck on a GPU."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    interpreted = {"test_utils": ("test_schema", "test_autograd_registration", "test_faketensor")}
    utils = {} if cuda else interpreted
    e, p, g = (t.to(device) for t in _inputs(7, 5, 12, torch.float32, seed=10))
    ops = torch.ops.seer_kernels
    torch.library.opcheck(
        ops.prototype_scores_triton.default, (e.requires_grad_(), p.requires_grad_(), True), **utils
    )
    _, rn_e, rn_p = ops.prototype_scores_triton(e.detach(), p.detach(), True)
    args = (g, e.detach(), p.detach(), rn_e, rn_p, True)
    torch.library.opcheck(ops.prototype_scores_backward_triton.default, args, **utils)


@needs_cpu
def test_compile_fullgraph_cpu():
    e, p, _ = _inputs(33, 20, 16, torch.float32, seed=11)

    def loss(a, b):
        return (sk.prototype_scores(a, b, backend="cpu") / 0.1).logsumexp(dim=1).sum()

    eager = _run(lambda a, b: loss(a, b).reshape(1, 1), e, p, torch.ones(1, 1))
    compiled = _run(
        lambda a, b: torch.compile(loss, fullgraph=True)(a, b).reshape(1, 1), e, p, torch.ones(1, 1)
    )
    for r, x in zip(eager, compiled, strict=True):
        torch.testing.assert_close(x, r, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ GPU
# Skipped without a CUDA GPU (tests/conftest.py); run by benchmarks/gpu_check.sh.

GPU_BACKENDS = list(_registry.op("prototype_scores").gpu_backends())


@pytest.mark.gpu
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("n,k,d", [*COVER, *WIDE, (1023, 3000, 128), (512, 16384, 256)])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backends(backend, n, k, d, dtype, normalize):
    if backend not in _backend.available_backends("cuda"):
        pytest.skip(f"{backend} not available on cuda")
    e, p, g = (t.cuda() for t in _inputs(n, k, d, dtype, seed=12))
    _check(backend, e, p, g, normalize, f"{backend} {dtype} normalize={normalize} {(n, k, d)}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_zero_rows_and_compile(backend):
    if backend not in _backend.available_backends("cuda"):
        pytest.skip(f"{backend} not available on cuda")
    e, p, g = (t.cuda() for t in _inputs(64, 300, 128, torch.bfloat16, seed=13))
    e[3] = 0
    ours = _run(lambda a, b: sk.prototype_scores(a, b, backend=backend), e, p, g)
    assert all(torch.isfinite(x).all() for x in ours) and (ours[0][3] == 0).all()

    def loss(a, b):
        return sk.prototype_scores(a, b, backend=backend).float().logsumexp(dim=1).sum().reshape(1, 1)

    eager = _run(loss, e, p, torch.ones(1, 1, device="cuda"))
    compiled = _run(torch.compile(loss, fullgraph=True), e, p, torch.ones(1, 1, device="cuda"))
    for r, x in zip(eager, compiled, strict=True):
        torch.testing.assert_close(x, r, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_gpu_opcheck_cuda_ops():
    e, p, g = (t.cuda() for t in _inputs(7, 5, 12, torch.float16, seed=14))
    ops = torch.ops.seer_kernels
    torch.library.opcheck(ops.prototype_scores.default, (e.requires_grad_(), p.requires_grad_(), True))
    _, rn_e, rn_p = ops.prototype_scores(e.detach(), p.detach(), True)
    torch.library.opcheck(
        ops.prototype_scores_backward.default, (g, e.detach(), p.detach(), rn_e, rn_p, True)
    )


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda: ([[1.0]], torch.randn(3, 4)), TypeError, "embeddings"),
        (lambda: (torch.randn(2, 4), torch.randn(3, 4, 1)), ValueError, "prototypes"),
        (lambda: (torch.randn(2, 4), torch.randn(3, 5)), ValueError, "feature size D"),
        (lambda: (torch.randn(2, 0), torch.randn(3, 0)), ValueError, "embeddings"),
        (lambda: (torch.ones(2, 4, dtype=torch.int64), torch.randn(3, 4)), TypeError, "embeddings"),
        (lambda: (torch.randn(2, 4), torch.randn(3, 4, device="meta")), ValueError, "prototypes on meta"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_names_the_argument(backend, make, exc, words):
    e, p = make()
    with pytest.raises(exc, match=words):
        sk.prototype_scores(e, p, backend=backend)


def test_bad_options():
    e, p = torch.randn(2, 4), torch.randn(3, 4)
    with pytest.raises(TypeError, match="normalize"):
        sk.prototype_scores(e, p, normalize=1)
    with pytest.raises(ValueError, match="backend"):
        sk.prototype_scores(e, p, backend="tpu")

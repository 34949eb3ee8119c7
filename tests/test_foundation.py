"""The foundation: reference ops against hand-worked answers and float64 formulas, the
compiled extension, backend selection, and the argument checks every backend shares."""

from __future__ import annotations

import math
import os

import pytest
import torch

import seer_kernels as sk
from seer_kernels import _backend, reference

# ----------------------------------------------------------------- reference oracles


def swav_sinkhorn_float64(scores: torch.Tensor, eps: float, iterations: int) -> torch.Tensor:
    """SwAV's algorithm exactly as written, in float64 (fine at moderate 1/eps)."""
    q = torch.exp(scores.double() / eps).t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def test_sinkhorn_2x2_by_hand():
    e = math.e
    codes = reference.sinkhorn(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), epsilon=1.0, iterations=1)
    expected = torch.tensor([[e, 1.0], [1.0, e]]) / (e + 1)
    torch.testing.assert_close(codes, expected, rtol=0, atol=1e-6)


def test_sinkhorn_one_prototype_and_one_sample():
    torch.manual_seed(0)
    # One prototype: every sample's only code is 1.
    torch.testing.assert_close(reference.sinkhorn(torch.randn(5, 1), 0.05, 3), torch.ones(5, 1))
    # One sample: the prototype step makes every prototype equally likely.
    torch.testing.assert_close(reference.sinkhorn(torch.randn(1, 4), 0.05, 3), torch.full((1, 4), 0.25))


def test_sinkhorn_uniform_scores_give_uniform_codes():
    codes = reference.sinkhorn(torch.full((6, 4), 0.3), 0.05, 3)
    torch.testing.assert_close(codes, torch.full((6, 4), 0.25))


@pytest.mark.parametrize("iterations", [0, 1, 3, 10])
@pytest.mark.parametrize("eps", [0.05, 0.5])
@pytest.mark.parametrize("shape", [(7, 3), (64, 33), (1, 5)])
def test_sinkhorn_reference_matches_swav_formula(shape, eps, iterations):
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    expected = swav_sinkhorn_float64(scores, eps, iterations)
    torch.testing.assert_close(reference.sinkhorn(scores.double(), eps, iterations), expected)
    torch.testing.assert_close(
        reference.sinkhorn(scores, eps, iterations), expected.float(), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(reference.swav_sinkhorn_baseline(scores.double(), eps, iterations), expected)
    torch.testing.assert_close(
        reference.lightly_sinkhorn_baseline(scores.double(), eps, iterations), expected
    )


def test_sinkhorn_reference_stays_finite_where_plain_swav_fails():
    scores = torch.rand(64, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    scores[0, 0] = 1.0
    assert torch.isnan(reference.swav_sinkhorn_baseline(scores, 0.01, 3)).any()
    assert torch.isnan(reference.lightly_sinkhorn_baseline(scores, 0.01, 3)).any()
    codes = reference.sinkhorn(scores, 0.01, 3)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(1), torch.ones(64), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        codes.double(), reference.sinkhorn(scores.double(), 0.01, 3), atol=5e-6, rtol=0
    )


def test_sinkhorn_reference_half_inputs():
    scores = (torch.rand(32, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1).half()
    assert not torch.isfinite(reference.swav_sinkhorn_baseline(scores, 0.05, 3)).all()
    codes = reference.sinkhorn(scores, 0.05, 3)
    assert codes.dtype == torch.float32
    torch.testing.assert_close(
        codes.double(), reference.sinkhorn(scores.double(), 0.05, 3), atol=5e-6, rtol=0
    )


def test_prototype_scores_reference_formula():
    torch.manual_seed(4)
    e, p = torch.randn(7, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    expected = torch.stack([torch.stack([(x @ y) / (x.norm() * y.norm()) for y in p]) for x in e])
    torch.testing.assert_close(reference.prototype_scores(e, p), expected)
    torch.testing.assert_close(reference.prototype_scores(e, p, normalize=False), e @ p.t())


def test_swav_cross_entropy_reference_formula():
    torch.manual_seed(5)
    v, a, b, k, t = 4, 2, 3, 5, 0.1
    scores = torch.randn(v, b, k, dtype=torch.float64)
    codes = torch.softmax(torch.randn(a, b, k, dtype=torch.float64), -1)
    total = 0.0
    for i in range(a):
        for j in range(v):
            if j == i:
                continue
            for n in range(b):
                logp = scores[j, n] / t - torch.logsumexp(scores[j, n] / t, 0)
                total -= float((codes[i, n] * logp).sum()) / (b * (v - 1) * a)
    assert reference.swav_cross_entropy(scores, codes, t).item() == pytest.approx(total, rel=1e-12)


def test_reference_gradcheck():
    torch.manual_seed(6)
    e = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    p = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: sk.prototype_scores(x, y, backend="reference"), (e, p))
    scores = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    codes = torch.softmax(torch.randn(2, 2, 4, dtype=torch.float64), -1)
    assert torch.autograd.gradcheck(
        lambda s: sk.swav_cross_entropy(s, codes, 0.5, backend="reference"), (scores,)
    )


def test_reference_accepts_non_contiguous():
    torch.manual_seed(7)
    scores = torch.rand(16, 8).t()  # (8, 16), transposed view
    torch.testing.assert_close(
        sk.sinkhorn(scores, backend="reference"), reference.sinkhorn(scores.contiguous())
    )


# ------------------------------------------------------------ extension and backends


def test_extension_loads_and_reports_build():
    assert _backend.extension() is not None, _backend._C_ERROR
    info = sk.build_info()
    assert {"compiler", "torch", "cuda", "cuda_version", "cuda_archs"} <= set(info)
    assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
    if os.environ.get("SEER_KERNELS_EXPECT_CUDA") == "1":
        assert info["cuda"], "CI expects the CUDA kernels to be compiled and linked"
        assert info["cuda_version"] and info["cuda_archs"]


def test_info_reports_backends(capsys):
    from seer_kernels import info

    info.main()
    out = capsys.readouterr().out
    assert "cpu  backends" in out and "reference" in out


def test_available_backends_and_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert sk.available_backends("cpu")[0] == "reference"
    assert "cpu" in sk.available_backends("cpu")
    assert _backend.resolve(None, cpu) == "cpu"
    monkeypatch.setenv("SEER_KERNELS_BACKEND", "reference")
    assert _backend.resolve(None, cpu) == "reference"
    with pytest.raises(ValueError, match="backend must be one of"):
        _backend.resolve("fastest", cpu)
    monkeypatch.delenv("SEER_KERNELS_BACKEND")
    # The order is per op, from GPU measurements of the kernels it names (on an H200,
    # prototype_scores' CUDA GEMMs beat the Triton ones and sinkhorn's CUDA op led at the
    # per-GPU shapes); kernels no GPU has run come after the measured ones (sinkhorn's new
    # Triton pipeline, prototype_cross_entropy's Triton kernels behind its reference).
    monkeypatch.setattr(_backend, "_usable", lambda name, device_type, op="": True)
    gpu = torch.device("cuda")
    assert _backend.resolve(None, gpu, "prototype_scores") == "cuda"
    assert _backend.resolve(None, gpu, "sinkhorn") == "cuda"
    assert _backend.resolve(None, gpu, "swav_cross_entropy") == "triton"
    assert _backend.resolve(None, gpu, "prototype_cross_entropy") == "reference"
    assert _backend.resolve(None, gpu) == "triton"
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"'cuda' is not available for cpu tensors; available: \["):
            sk.sinkhorn(torch.rand(4, 3), backend="cuda")


# ------------------------------------------------------------------------ bad input

S2 = torch.rand(4, 3)
S3 = torch.rand(3, 4, 5)
C3 = torch.rand(2, 4, 5)

BAD_CALLS = [
    (
        lambda: sk.sinkhorn(torch.rand(4), epsilon=0.05, iterations=3),
        ValueError,
        r"scores must be a 2-D \(B, K\).*\(4,\)",
    ),
    (
        lambda: sk.sinkhorn([[1.0]], epsilon=0.05, iterations=3),
        TypeError,
        "scores must be a torch.Tensor, got list",
    ),
    (lambda: sk.sinkhorn(torch.ones(4, 3, dtype=torch.long)), TypeError, "scores must be a floating.*int64"),
    (lambda: sk.sinkhorn(torch.rand(0, 3)), ValueError, "scores must not be empty"),
    (
        lambda: sk.sinkhorn(S2, epsilon=0.0, iterations=3),
        ValueError,
        "epsilon must be a finite number > 0, got 0.0",
    ),
    (lambda: sk.sinkhorn(S2, epsilon=-1, iterations=3), ValueError, "epsilon must be .* got -1"),
    (lambda: sk.sinkhorn(S2, epsilon=float("nan"), iterations=3), ValueError, "epsilon must be"),
    (lambda: sk.sinkhorn(S2, epsilon=0.05, iterations=-1), ValueError, "iterations must be >= 0, got -1"),
    (
        lambda: sk.sinkhorn(S2, epsilon=0.05, iterations=2.5),
        TypeError,
        "iterations must be an int, got float",
    ),
    # lightly's sinkhorn(out, iterations, epsilon) orders the two the other way: keyword-only.
    (lambda: sk.sinkhorn(S2, 3, 10), TypeError, "positional argument"),
    (lambda: sk.prototype_scores(torch.rand(4, 3), torch.rand(5, 2)), ValueError, "same feature size D"),
    (
        lambda: sk.prototype_scores(torch.rand(4, 3, 1), torch.rand(5, 3)),
        ValueError,
        "embeddings must be a 2-D",
    ),
    (lambda: sk.prototype_scores(torch.rand(4, 3), torch.rand(3)), ValueError, "prototypes must be a 2-D"),
    (
        lambda: sk.prototype_scores(torch.rand(4, 3), torch.ones(5, 3, dtype=torch.int32)),
        TypeError,
        "prototypes",
    ),
    (lambda: sk.prototype_scores(torch.rand(4, 0), torch.rand(5, 0)), ValueError, "D >= 1"),
    (
        lambda: sk.swav_cross_entropy(S3, C3, 0.0),
        ValueError,
        "temperature must be a finite number > 0, got 0.0",
    ),
    (lambda: sk.swav_cross_entropy(S3[:1], C3[:1]), ValueError, "V >= 2 crops, got V=1"),
    (lambda: sk.swav_cross_entropy(S3, torch.rand(4, 4, 5)), ValueError, "1 <= A <= V.*A=4 with V=3"),
    (lambda: sk.swav_cross_entropy(S3, torch.rand(2, 3, 5)), ValueError, "must match scores .* in B and K"),
    (lambda: sk.swav_cross_entropy(S3, torch.rand(2, 4, 6)), ValueError, "must match scores .* in B and K"),
    (lambda: sk.swav_cross_entropy(S3[0], C3), ValueError, r"scores must be a 3-D \(V, B, K\)"),
    (lambda: sk.swav_cross_entropy(S3, C3.long()), TypeError, "codes must be a floating"),
]


@pytest.mark.parametrize("backend", [None, "reference"])
@pytest.mark.parametrize("call,error,message", BAD_CALLS)
def test_bad_input(call, error, message, backend, monkeypatch):
    if backend:
        monkeypatch.setenv("SEER_KERNELS_BACKEND", backend)
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_tensors_on_different_devices():
    with pytest.raises(ValueError, match="one device"):
        sk.prototype_scores(torch.rand(4, 3), torch.rand(5, 3, device="cuda"))

"""Property-based tests (hypothesis) of every op on every backend usable on the CPU,
against the float64 reference: random shapes (1 and odd sizes included), dtypes, eps,
temperatures, iterations, and non-contiguous / transposed inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seer_kernels as sk
from seer_kernels import reference

# The Triton interpreter runs each program in Python: fewer, smaller examples there.
EXAMPLES = {"triton": 8}
MAX_SIDE = {"triton": 24}
DTYPES = {"triton": [torch.float32, torch.float16]}
ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Gradients come back in the input dtype: its rounding bounds their relative error.
GRAD_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def run_settings(backend: str):
    return settings(
        max_examples=EXAMPLES.get(backend, 40),
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def layout(x: torch.Tensor, how: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if how == "transposed":
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if how == "strided":
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def cosine_like(data, shape, dtype) -> torch.Tensor:
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return x.to(dtype)


@pytest.mark.parametrize("backend", sk.available_backends("cpu", op="sinkhorn"))
def test_sinkhorn_properties(backend):
    side = MAX_SIDE.get(backend, 70)

    @run_settings(backend)
    @given(
        data=st.data(),
        b=st.integers(1, side),
        k=st.integers(1, side),
        eps=st.sampled_from([0.01, 0.03, 0.05, 0.2, 1.0]),
        iterations=st.integers(0, 10),
        dtype=st.sampled_from(DTYPES.get(backend, ALL_DTYPES)),
        how=st.sampled_from(["contiguous", "transposed", "strided"]),
    )
    def check(data, b, k, eps, iterations, dtype, how):
        scores = layout(cosine_like(data, (b, k), dtype), how)
        codes = sk.sinkhorn(scores, epsilon=eps, iterations=iterations, backend=backend)
        assert codes.dtype == torch.float32 and codes.shape == (b, k)
        assert torch.isfinite(codes).all()
        oracle = reference.sinkhorn(scores.double(), eps, iterations)
        # fp32 rounds L = scores / eps by |L| * 2^-24: relative to the codes' magnitude
        # (up to B when iterations = 0).
        assert (codes.double() - oracle).abs().max() <= 2e-5 * max(1.0, oracle.abs().max().item())
        if iterations >= 1:
            torch.testing.assert_close(codes.sum(1), torch.ones(b), rtol=0, atol=1e-5)

    check()


@pytest.mark.parametrize("backend", sk.available_backends("cpu", op="sinkhorn"))
def test_sinkhorn_balances_columns(backend):
    """Run long enough, Sinkhorn-Knopp gives every prototype B/K of the mass."""

    @run_settings(backend)
    @given(data=st.data(), b=st.integers(2, 40), k=st.integers(1, 12))
    def check(data, b, k):
        scores = cosine_like(data, (b, k), torch.float32)
        codes = sk.sinkhorn(scores, epsilon=0.5, iterations=60, backend=backend)
        torch.testing.assert_close(codes.sum(0), torch.full((k,), b / k), rtol=1e-3, atol=1e-4)

    check()


@pytest.mark.parametrize("backend", sk.available_backends("cpu", op="prototype_scores"))
def test_prototype_scores_properties(backend):
    side = MAX_SIDE.get(backend, 70)

    @run_settings(backend)
    @given(
        data=st.data(),
        n=st.integers(1, side),
        k=st.integers(1, side),
        d=st.integers(1, 40),
        normalize=st.booleans(),
        how=st.sampled_from(["contiguous", "transposed", "strided"]),
    )
    def check(data, n, k, d, normalize, how):
        e = layout(cosine_like(data, (n, d), torch.float32), how).requires_grad_()
        p = layout(cosine_like(data, (k, d), torch.float32), how).requires_grad_()
        out = sk.prototype_scores(e, p, normalize=normalize, backend=backend)
        grad = cosine_like(data, (n, k), torch.float32)
        ge, gp = torch.autograd.grad(out, (e, p), grad)
        e64, p64 = e.detach().double().requires_grad_(), p.detach().double().requires_grad_()
        oracle = reference.prototype_scores(e64, p64, normalize)
        oe, op = torch.autograd.grad(oracle, (e64, p64), grad.double())
        scale = 1.0 if normalize else d
        assert (out.double() - oracle).abs().max() <= 1e-5 * scale
        assert (ge.double() - oe).abs().max() <= 1e-4 * scale * max(1.0, oe.abs().max().item())
        assert (gp.double() - op).abs().max() <= 1e-4 * scale * max(1.0, op.abs().max().item())
        if normalize:
            assert out.abs().max() <= 1 + 1e-5

    check()


@pytest.mark.parametrize("backend", sk.available_backends("cpu", op="swav_cross_entropy"))
def test_swav_cross_entropy_properties(backend):
    side = MAX_SIDE.get(backend, 50)

    @run_settings(backend)
    @given(
        data=st.data(),
        v=st.integers(2, 5),
        b=st.integers(1, side),
        k=st.integers(1, side),
        temperature=st.sampled_from([0.05, 0.1, 1.0]),
        dtype=st.sampled_from(DTYPES.get(backend, ALL_DTYPES)),
        how=st.sampled_from(["contiguous", "transposed", "strided"]),
    )
    def check(data, v, b, k, temperature, dtype, how):
        a = data.draw(st.integers(1, v), label="a")
        scores = layout(cosine_like(data, (v, b, k), dtype), how).requires_grad_()
        codes = reference.sinkhorn(cosine_like(data, (a * b, k), torch.float32), 0.05, 3).reshape(a, b, k)
        loss = sk.swav_cross_entropy(scores, codes, temperature, backend=backend)
        (grad,) = torch.autograd.grad(loss, scores)
        s64 = scores.detach().double().requires_grad_()
        oracle = reference.swav_cross_entropy(s64, codes.double(), temperature)
        (ograd,) = torch.autograd.grad(oracle, s64)
        assert torch.isfinite(loss) and loss.item() >= -1e-6  # cross-entropy of valid codes
        assert abs(loss.item() - oracle.item()) <= 1e-5 * max(1.0, abs(oracle.item()))
        assert (grad.double() - ograd).abs().max() <= GRAD_RTOL[dtype] * max(1.0, ograd.abs().max().item())

    check()

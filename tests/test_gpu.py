"""GPU checks (`pytest -m gpu`, run by benchmarks/gpu_check.sh on a lent GPU): every GPU
backend of every op against float64 on the device, forward and backward, under autocast
and under torch.compile with the inductor (Triton) backend; and the trainer's augmentation
on CUDA batches against the CPU. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seer_kernels as sk
from seer.augment import MultiCrop, color_jitter
from seer.config import load_config
from seer_kernels import _registry, reference
from tests.tolerance import assert_close_rule

pytestmark = pytest.mark.gpu
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def gpu_backends() -> list[str]:
    if not torch.cuda.is_available():
        return list(_registry.GPU_BACKENDS)  # collected, then skipped by conftest
    return [b for b in sk.available_backends("cuda") if b != "reference"]


def cosines(*shape, dtype=torch.float32, seed=0):
    """SwAV-like scores of shape `shape`: unit embeddings (shape[:-1], dim 64) against
    shape[-1] unit prototypes."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(*shape[:-1], 64, device="cuda", generator=g)
    p = torch.randn(shape[-1], 64, device="cuda", generator=g)
    return (F.normalize(x, dim=-1) @ F.normalize(p, dim=-1).t()).to(dtype)


@pytest.fixture(autouse=True)
def _exact_fp32_matmul():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "b,k,iters,eps",
    [(1, 3, 3, 0.05), (1023, 3000, 3, 0.05), (4096, 3000, 3, 0.01), (2048, 16384, 10, 0.03), (7, 1, 1, 0.5)],
)
def test_sinkhorn_gpu(backend, dtype, b, k, iters, eps):
    scores = cosines(b, k, dtype=dtype)
    out = sk.sinkhorn(scores, epsilon=eps, iterations=iters, backend=backend)
    oracle = reference.sinkhorn(scores.double(), eps, iters)
    same = reference.sinkhorn(scores, eps, iters)
    assert_close_rule(out, same, oracle, torch.float32, floor=2e-6, what=f"sinkhorn {backend}")
    torch.testing.assert_close(out.sum(1), torch.ones(b, device="cuda"), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,k", [(1, 1, 1), (7, 3, 3), (1023, 128, 3000), (512, 256, 16384)])
def test_prototype_scores_gpu(backend, dtype, n, d, k):
    g = torch.Generator(device="cuda").manual_seed(1)
    e = torch.randn(n, d, device="cuda", generator=g).to(dtype).requires_grad_()
    p = torch.randn(k, d, device="cuda", generator=g).to(dtype).requires_grad_()
    grad = torch.randn(n, k, device="cuda", generator=g).to(dtype)
    out = sk.prototype_scores(e, p, backend=backend)
    ge, gp = torch.autograd.grad(out, (e, p), grad)
    same = reference.prototype_scores(e, p)
    se, sp = torch.autograd.grad(same, (e, p), grad)
    e64, p64 = e.detach().double().requires_grad_(), p.detach().double().requires_grad_()
    oracle = reference.prototype_scores(e64, p64)
    oe, op = torch.autograd.grad(oracle, (e64, p64), grad.double())
    assert_close_rule(out, same, oracle, dtype, what="scores")
    assert_close_rule(ge, se, oe, dtype, what="grad embeddings")
    assert_close_rule(gp, sp, op, dtype, what="grad prototypes")


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "v,a,b,k,t", [(2, 1, 1, 1, 0.1), (3, 3, 7, 3, 0.05), (8, 2, 256, 3000, 0.1), (8, 2, 1024, 16384, 0.1)]
)
def test_swav_cross_entropy_gpu(backend, dtype, v, a, b, k, t):
    scores = cosines(v, b, k, dtype=dtype, seed=2).requires_grad_()
    codes = sk.sinkhorn(cosines(a, b, k, seed=3).reshape(a * b, k), epsilon=0.05, iterations=3).reshape(
        a, b, k
    )
    loss = sk.swav_cross_entropy(scores, codes, t, backend=backend)
    (grad,) = torch.autograd.grad(loss, scores)
    same = reference.swav_cross_entropy(scores, codes, t)
    (sgrad,) = torch.autograd.grad(same, scores)
    s64 = scores.detach().double().requires_grad_()
    oracle = reference.swav_cross_entropy(s64, codes.double(), t)
    (ograd,) = torch.autograd.grad(oracle, s64)
    assert_close_rule(loss, same, oracle, dtype, what="loss")
    assert_close_rule(grad, sgrad, ograd, dtype, what="grad scores")


@pytest.mark.parametrize("backend", gpu_backends())
def test_autocast_bf16(backend):
    e = torch.randn(256, 128, device="cuda", requires_grad=True)
    p = torch.randn(3000, 128, device="cuda", requires_grad=True)
    w = torch.randn(128, 128, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        z = e @ w  # bf16 under autocast
        scores = sk.prototype_scores(z, p.to(z.dtype), backend=backend)
        codes = sk.sinkhorn(scores, epsilon=0.05, iterations=3, backend=backend)
        crops = scores.reshape(2, 128, 3000)
        loss = sk.swav_cross_entropy(crops, codes.reshape(2, 128, 3000)[:1], 0.1, backend=backend)
    assert codes.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(e.grad).all() and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("backend", gpu_backends())
def test_compile_fullgraph_gpu(backend):
    def step(e, p):
        scores = sk.prototype_scores(e, p, backend=backend)
        codes = sk.sinkhorn(scores.detach(), epsilon=0.05, iterations=3, backend=backend)
        crops = scores.reshape(2, -1, scores.shape[1])
        return sk.swav_cross_entropy(crops, codes.reshape(2, -1, scores.shape[1])[:1], 0.1, backend=backend)

    e = torch.randn(64, 32, device="cuda", requires_grad=True)
    p = torch.randn(300, 32, device="cuda", requires_grad=True)
    eager = step(e, p)
    compiled = torch.compile(step, fullgraph=True)(e, p)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    compiled.backward()
    assert torch.isfinite(e.grad).all()


def test_color_jitter_in_a_random_order_on_cuda_matches_the_cpu():
    """The per-sample order groups the crops on the CPU (CUDA has no int64 matmul), as
    MultiCrop draws it and with the order itself on the device."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 20, 20, generator=gen)
    b, c, s = (0.2 + 1.6 * torch.rand(16, generator=gen, dtype=torch.float64) for _ in range(3))
    h = 0.4 * torch.rand(16, generator=gen, dtype=torch.float64) - 0.2
    order = torch.argsort(torch.rand(16, 4, generator=gen), dim=1)
    cpu = color_jitter(x, b, c, s, h, order=order)
    for o in (order, order.cuda()):
        torch.testing.assert_close(color_jitter(x.cuda(), b, c, s, h, order=o).cpu(), cpu, atol=1e-4, rtol=0)
    cfg = load_config("photos").augment  # colour jitter 0.8, in a random order per crop
    cfg.global_size, cfg.local_size = 24, 12
    images = torch.rand(4, 3, 32, 32, generator=gen)
    on_cpu = MultiCrop(cfg)(images, torch.Generator().manual_seed(1))
    on_gpu = MultiCrop(cfg)(images.cuda(), torch.Generator().manual_seed(1))
    for a, g in zip(on_cpu, on_gpu, strict=True):
        assert g.is_cuda
        torch.testing.assert_close(g.cpu(), a, atol=1e-3, rtol=0)

"""Benchmarks of seer_kernels.prototype_cross_entropy, the fused SwAV head (forward +
backward: the op computes its gradients in the forward, so forward alone is not a case).

Run:  PYTHONPATH=$PWD python -m pytest benchmarks/bench_prototype_cross_entropy.py --benchmark-only

Every available fused backend against the baselines, all from (V, B, D) embeddings,
(K, D) prototypes and (A, B, K) codes to both gradients:
  reference           seer_kernels.reference.prototype_cross_entropy, eager;
  compiled_reference  the same under torch.compile (small shapes only: its compile
                      dominates the large CPU case);
  composition         today's fused ops composed: prototype_scores into
                      swav_cross_entropy, on the device's default backends (the issue's
                      CPU time and memory targets are ratios to it);
  plain               plain PyTorch SwAV code: F.normalize(e) @ F.normalize(p).T into
                      lightly's per-pair log-softmax loop (the eager reference computes
                      the same, so it is not timed again).
Shapes (V, B, D, K) from the issue; A = 2, T = 0.1, fp32. The CPU runs (8, 64, 128, 3000)
and (10, 256, 256, 65536); the latter's plain baseline holds 2.4 GB and takes ~15 s a call
on 2 cores. The Triton interpreter is not a performance backend: Triton is benchmarked on
GPUs only.

Peak memory (extra_info["peak_bytes"]): on a GPU torch.cuda.max_memory_allocated during
one call; on the CPU the profiler's allocation timeline (as bench_swav_cross_entropy.py),
which sees every tensor the op allocates but not the CPU kernel's std::vector scratch
(A x 1024 values per thread and a few values per row). tests/test_memory.py measures RSS.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import bench_devices, peak_bytes, timed
from seer_kernels import _backend, prototype_cross_entropy, prototype_scores, reference, swav_cross_entropy

SHAPES = [(8, 64, 128, 3000), (8, 256, 128, 3000), (6, 32, 256, 16000), (10, 256, 256, 65536)]
CPU_SHAPES = [SHAPES[0], SHAPES[3]]
A, TEMPERATURE = 2, 0.1
ROUNDS = {"cpu": 3, "cuda": 20}

_compiled_reference = torch.compile(reference.prototype_cross_entropy, dynamic=True)


def plain_swav_loss(
    e: torch.Tensor, p: torch.Tensor, codes: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Plain PyTorch SwAV code: cosine scores, then lightly's SwaVLoss loop of per-pair
    log-softmax cross-entropies (mean over the other crops, then over assignment crops)."""
    v, b, d = e.shape
    scores = (F.normalize(e.reshape(v * b, d), dim=1) @ F.normalize(p, dim=1).t()).view(v, b, -1)
    loss = 0.0
    for a in range(codes.shape[0]):
        sub = 0.0
        for i in range(v):
            if i != a:
                sub = sub - torch.mean(
                    torch.sum(codes[a] * F.log_softmax(scores[i] / temperature, dim=1), dim=1)
                )
        loss = loss + sub / (v - 1)
    return loss / codes.shape[0]


def composition(e: torch.Tensor, p: torch.Tensor, codes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Today's fused ops composed, each on its default backend."""
    v, b, d = e.shape
    scores = prototype_scores(e.reshape(v * b, d), p).view(v, b, -1)
    return swav_cross_entropy(scores, codes, temperature)


def _backends(device: str, shape) -> list[str]:
    fused = [b for b in _backend.available_backends(device, op="prototype_cross_entropy") if b != "reference"]
    if device == "cpu":
        fused = [b for b in fused if b != "triton"]  # the interpreter: not a benchmark
    small = device == "cuda" or shape == CPU_SHAPES[0]
    return [*fused, "composition", "plain", *(["compiled_reference"] if small else [])]


def _cases():
    for device in bench_devices():
        for shape in CPU_SHAPES if device == "cpu" else SHAPES:
            for backend in _backends(device, shape):
                yield pytest.param(device, shape, backend, id=f"{device}-{shape}-{backend}")


def inputs(device: str, shape: tuple[int, int, int, int], seed: int = 0):
    v, b, d, k = shape
    g = torch.Generator(device=device).manual_seed(seed)
    e = torch.randn(v, b, d, device=device, generator=g)
    p = torch.randn(k, d, device=device, generator=g)
    codes = torch.softmax(torch.randn(A, b, k, device=device, generator=g) * 3, dim=-1)
    return e, p, codes


def loss_fn(backend: str):
    fns = {
        "reference": reference.prototype_cross_entropy,
        "compiled_reference": _compiled_reference,
        "composition": composition,
        "plain": plain_swav_loss,
    }
    if backend in fns:
        return fns[backend]
    return lambda e, p, c, t: prototype_cross_entropy(e, p, c, t, backend=backend)


def head_fn(name: str):
    """(e, p, codes) -> the loss at TEMPERATURE, for benchmarks/head_cpu.py and
    tests/test_memory.py: "fused" is the cpu backend, the other names as loss_fn's."""
    fn = loss_fn("cpu" if name == "fused" else name)
    return lambda e, p, c: fn(e, p, c, TEMPERATURE)


def step(fn, device: str):
    """The timed call: loss and both gradients; GPU work is synchronized inside it."""
    return timed(
        lambda e, p, codes: torch.autograd.grad(fn(e, p, codes, TEMPERATURE), (e, p)), torch.device(device)
    )


def floor(shape) -> tuple[int, int]:
    """(bytes, flops): embeddings, prototypes and codes read once, both gradients written
    once (fp32); three GEMMs of 2 V B K D FLOPs (scores, G P, G^T E)."""
    v, b, d, k = shape
    return 4 * (2 * (v * b * d + k * d) + A * b * k), 6 * v * b * k * d


@pytest.mark.parametrize("device, shape, backend", list(_cases()))
def test_prototype_cross_entropy(benchmark, device, shape, backend):
    e, p, codes = inputs(device, shape)
    e.requires_grad_(True)
    p.requires_grad_(True)
    run = step(loss_fn(backend), device)
    run(e, p, codes)  # compile / first-touch outside the measurements
    nbytes, flops = floor(shape)
    benchmark.group = f"prototype_cross_entropy forward_backward {device} (V,B,D,K)={shape}"
    benchmark.extra_info.update(
        op="prototype_cross_entropy",
        backend=backend,
        baseline=backend in ("reference", "compiled_reference", "composition", "plain"),
        shape=list(shape),
        dtype="float32",
        device=device,
        direction="forward_backward",
        bytes=nbytes,
        flops=flops,
        peak_bytes=peak_bytes(run, (e, p, codes), device),
    )
    benchmark.pedantic(run, setup=lambda: ((e, p, codes), {}), rounds=ROUNDS[device], warmup_rounds=1)

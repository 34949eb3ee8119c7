"""Benchmarks of seer_kernels.swav_cross_entropy (forward, and forward + backward).

Run:  PYTHONPATH=$PWD python -m pytest benchmarks/bench_swav_cross_entropy.py --benchmark-only
      (add --benchmark-json=benchmarks/results/<name>.json to keep the numbers)

Every available fused backend is compared with the baselines: the reference loop over
crop pairs (one log-softmax per pair, as SwAV and lightly write it) run eagerly and
under torch.compile. Shapes (V, A, B, K) from the issue; on the CPU the largest one
(8, 2, 1024, 16384: 512 MiB of scores, many GiB for the eager loop) is GPU-only so that
the CPU run stays within ~3 minutes. The Triton interpreter is not a performance
backend, so Triton is benchmarked on GPUs only.

Peak memory (extra_info["peak_bytes"], measured once per case outside the timing):
  GPU  torch.cuda.max_memory_allocated during one call, minus what was allocated before.
  CPU  the c10 CPU allocator's allocation/free timeline recorded by the profiler
       (profile_memory=True; the data behind prof.export_memory_timeline) during one
       call, summed in time order, maximum taken. It
       counts every tensor allocation (ATen, autograd, the C++ op's outputs) but not
       memory a kernel takes with malloc/new directly: the CPU kernels' per-thread
       scratch rows, (A + 2) K floats per thread, and B doubles of loss partials.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import peak_bytes
from seer_kernels import _backend, reference, swav_cross_entropy

SHAPES = [(8, 2, 64, 3000), (8, 2, 256, 3000), (6, 2, 16, 16384), (8, 2, 1024, 16384)]
CPU_SHAPES = SHAPES[:3]
TEMPERATURE = 0.1
ROUNDS = {"cpu": 3, "cuda": 20}


# One dynamic compile serves every shape (a static compile per shape costs more than
# the cases it times).
_compiled_reference = torch.compile(reference.swav_cross_entropy, dynamic=True)


def _devices() -> list[str]:
    # A GPU machine's run measures the GPU (its CPU cases cost minutes of a GPU lease).
    return ["cuda"] if torch.cuda.is_available() else ["cpu"]


def _backends(device: str) -> list[str]:
    fused = [b for b in _backend.available_backends(device, op="swav_cross_entropy") if b != "reference"]
    if device == "cpu":
        fused = [b for b in fused if b != "triton"]  # the interpreter: not a benchmark
    # The compiled baseline last: its compile is the slow part, and a run stopped for time
    # (benchmarks/run.py --time-budget) still has the fused cases and the eager baseline.
    return ["reference", *fused, "compiled_reference"]


def _cases():
    for device in _devices():
        for shape in CPU_SHAPES if device == "cpu" else SHAPES:
            for backend in _backends(device):
                for direction in ("forward", "forward_backward"):
                    yield pytest.param(
                        device, shape, backend, direction, id=f"{device}-{shape}-{backend}-{direction}"
                    )


def _inputs(device: str, shape: tuple[int, int, int, int]):
    v, a, b, k = shape
    g = torch.Generator(device=device).manual_seed(0)
    scores = torch.rand(v, b, k, device=device, generator=g) * 2 - 1
    codes = torch.softmax(torch.randn(a, b, k, device=device, generator=g) * 3, dim=-1)
    return scores, codes


def _loss_fn(backend: str):
    if backend == "reference":
        return reference.swav_cross_entropy
    if backend == "compiled_reference":
        return _compiled_reference
    return lambda s, c, t: swav_cross_entropy(s, c, t, backend=backend)


def _step(loss_fn, direction: str, device: str):
    """The timed call; GPU work is synchronized inside it."""

    def run(scores, codes):
        if direction == "forward":
            with torch.no_grad():
                out = loss_fn(scores, codes, TEMPERATURE)
        else:
            loss = loss_fn(scores, codes, TEMPERATURE)
            out = torch.autograd.grad(loss, scores)[0]
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def _floor(shape, direction: str) -> tuple[int, int]:
    """(bytes, flops) of the fused algorithm: scores and codes read once forward; backward
    reads scores and codes again and writes the gradient (fp32 here). FLOPs per score
    element and direction ~ A + 6 (one exp counted as one)."""
    v, a, b, k = shape
    fwd = 4 * (v * b * k + a * b * k) + 8 * v * b
    flops = v * b * k * (a + 6)
    if direction == "forward":
        return fwd, flops
    return fwd + 4 * (2 * v * b * k + a * b * k) + 8 * v * b, 2 * flops


@pytest.mark.parametrize("device, shape, backend, direction", list(_cases()))
def test_swav_cross_entropy(benchmark, device, shape, backend, direction):
    scores, codes = _inputs(device, shape)
    scores.requires_grad_(direction == "forward_backward")
    run = _step(_loss_fn(backend), direction, device)
    run(scores, codes)  # compile / autotune / first-touch outside the measurements
    nbytes, flops = _floor(shape, direction)
    benchmark.group = f"swav_cross_entropy {direction} {device} (V,A,B,K)={shape}"
    benchmark.extra_info.update(
        op="swav_cross_entropy",
        backend=backend,
        baseline=backend in ("reference", "compiled_reference"),
        shape=list(shape),
        dtype="float32",
        device=device,
        direction=direction,
        bytes=nbytes,
        flops=flops,
        peak_bytes=peak_bytes(run, (scores, codes), device),
    )
    benchmark.pedantic(run, setup=lambda: ((scores, codes), {}), rounds=ROUNDS[device], warmup_rounds=1)

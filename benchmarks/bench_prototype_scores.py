"""prototype_scores: every backend against reference eager (F.normalize x2 + matmul),
torch.compile(reference) and, forward only, a bare matmul of pre-normalized operands
(the GPU target: within 10% of it).

    PYTHONPATH=$PWD python -m pytest benchmarks/bench_prototype_scores.py --benchmark-only

Shapes (N, D, K): (2048, 128, 3000), (512, 256, 16384), (16384, 256, 16384); on the CPU
only the first two (the third is 137 GFLOP per forward) and fp32/bf16 (fp16 GEMMs on
the CPU are a slow ATen fallback in the reference). Floors, s = element size:
  forward           bytes (N + K) D s + N K s               FLOPs 2 N K D
  forward+backward  bytes 4 (N + K) D s + 2 N K s           FLOPs 6 N K D
(inputs read and outputs written once per pass; the scores/gradient once each way).
extra_info also carries the measured TFLOP/s and, on a GPU, the peak memory. Measured
results: benchmarks/results/prototype_scores.md.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import seer_kernels as sk
from seer_kernels import _backend, reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GPU_SHAPES = [(2048, 128, 3000), (512, 256, 16384), (16384, 256, 16384)]
CPU_SHAPES = GPU_SHAPES[:2]
SHAPES = GPU_SHAPES if DEVICE.type == "cuda" else CPU_SHAPES
DTYPES = [torch.float32, torch.bfloat16]
if DEVICE.type == "cuda":
    DTYPES.append(torch.float16)
# CPU threads (default: every core). On a shared machine SEER_BENCH_THREADS=1 gives
# stable ratios: with cores oversubscribed, every fork/join waits for a descheduled thread.
THREADS = int(os.environ.get("SEER_BENCH_THREADS", os.cpu_count() or 1))
MODES = ["forward", "forward+backward"]
# Interpreted Triton is a correctness tool, not something to time.
BACKENDS = [b for b in _backend.available_backends(DEVICE, op="prototype_scores") if b != "reference"]
if DEVICE.type == "cpu":
    BACKENDS = [b for b in BACKENDS if b != "triton"]
IMPLS = [*BACKENDS, "reference", "reference_compiled", "mm_prenormalized"]
ROUNDS = {(2048, 128, 3000): 10, (512, 256, 16384): 5, (16384, 256, 16384): 10}

# One static compile per (shape, dtype, mode): more than dynamo's default 8 per function.
torch._dynamo.config.cache_size_limit = 64
_compiled_reference = torch.compile(reference.prototype_scores, dynamic=False)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _impl(name: str):
    if name == "reference":
        return reference.prototype_scores
    if name == "reference_compiled":
        return _compiled_reference
    return lambda e, p: sk.prototype_scores(e, p, backend=name)


def _floor(n: int, d: int, k: int, dtype: torch.dtype, mode: str) -> tuple[int, int]:
    s = torch.empty((), dtype=dtype).element_size()
    if mode == "forward":
        return (n + k) * d * s + n * k * s, 2 * n * k * d
    return 4 * (n + k) * d * s + 2 * n * k * s, 6 * n * k * d


# impl varies fastest: the implementations of one case run back to back (fairer on a
# machine whose load drifts).
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_prototype_scores(benchmark, impl, shape, dtype, mode):
    if impl == "mm_prenormalized" and mode != "forward":
        pytest.skip("the bare-matmul baseline is forward only")
    torch.set_num_threads(THREADS)
    n, d, k = shape
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    e = torch.randn(n, d, device=DEVICE, dtype=dtype, generator=gen)
    p = torch.randn(k, d, device=DEVICE, dtype=dtype, generator=gen)
    grad = torch.randn(n, k, device=DEVICE, dtype=dtype, generator=gen)

    if impl == "mm_prenormalized":
        e_hat, p_hat = F.normalize(e, dim=1), F.normalize(p, dim=1)

        def run():
            out = e_hat @ p_hat.t()
            _sync()
            return out

        setup = None
    elif mode == "forward":
        fn = _impl(impl)

        def run():
            with torch.no_grad():
                out = fn(e, p)
            _sync()
            return out

        setup = None
    else:
        fn = _impl(impl)

        def run(e_leaf, p_leaf):
            fn(e_leaf, p_leaf).backward(grad)
            _sync()

        def setup():
            return (e.detach().requires_grad_(), p.detach().requires_grad_()), {}

    bytes_floor, flops = _floor(n, d, k, dtype, mode)
    benchmark.group = f"prototype_scores {mode} N={n} D={d} K={k} {str(dtype).replace('torch.', '')}"
    benchmark.extra_info.update(
        {
            "op": "prototype_scores",
            "backend": impl,
            "baseline": impl in ("reference", "reference_compiled", "mm_prenormalized"),
            "shape": {"N": n, "D": d, "K": k},
            "dtype": str(dtype).replace("torch.", ""),
            "mode": mode,
            "bytes": bytes_floor,
            "flops": flops,
            "threads": torch.get_num_threads(),
        }
    )
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEVICE)
    rounds = ROUNDS[shape]
    benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=1)
    median = benchmark.extra_info.get("device_median_s", benchmark.stats.stats.median)
    benchmark.extra_info["TFLOPs"] = flops / median / 1e12
    benchmark.extra_info["GBps_floor"] = bytes_floor / median / 1e9
    if DEVICE.type == "cuda":
        benchmark.extra_info["peak_memory_bytes"] = torch.cuda.max_memory_allocated(DEVICE)


# ------------------------------------------------- interleaved CPU-time comparison
# On a shared machine wall-clock rounds drift with the load. `python
# benchmarks/bench_prototype_scores.py [threads] [rounds]` alternates the implementations
# round by round and, with one thread, times thread CPU time (immune to descheduling).


def _call(fn, e: torch.Tensor, p: torch.Tensor, grad: torch.Tensor, mode: str) -> None:
    if mode == "forward":
        with torch.no_grad():
            fn(e, p)
    else:
        fn(e.detach().requires_grad_(), p.detach().requires_grad_()).backward(grad)
    _sync()


def _interleaved(threads: int, rounds: int) -> None:
    import time

    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    impls = [*BACKENDS, "reference", "reference_compiled"]
    for (n, d, k), dtype, mode in ((s, t, m) for s in SHAPES for t in DTYPES for m in MODES):
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        e, p = (torch.randn(r, d, device=DEVICE, dtype=dtype, generator=gen) for r in (n, k))
        grad = torch.randn(n, k, device=DEVICE, dtype=dtype, generator=gen)
        times = {name: [] for name in impls}
        for name in impls * 2:  # warm-up (and compile)
            _call(_impl(name), e, p, grad, mode)
        for _ in range(rounds):
            for name in impls:
                start = clock()
                _call(_impl(name), e, p, grad, mode)
                times[name].append(clock() - start)
        best = {name: min(ts) * 1e3 for name, ts in times.items()}
        ratios = " ".join(f"{b}: eager/{b} {best['reference'] / best[b]:.2f}" for b in BACKENDS)
        cells = " ".join(f"{name}={ms:.1f}ms" for name, ms in best.items())
        print(f"{mode:16s} N={n} D={d} K={k} {str(dtype)[6:]:8s} {cells} | {ratios}", flush=True)


if __name__ == "__main__":
    import sys

    _interleaved(int(sys.argv[1]) if len(sys.argv) > 1 else 1, int(sys.argv[2]) if len(sys.argv) > 2 else 12)

"""Shared set-up of the benchmark suite (`pytest benchmarks/ --benchmark-only`).

Conventions every bench_<op>.py follows, so benchmarks/run.py can summarize them:
- `benchmark.group` names the op, pass and shape; one group compares backends on one case;
- `benchmark.extra_info` = {"op", "backend", "baseline" (bool), "shape", "dtype",
  "bytes" (the floor: each input read once, each output written once), "flops"};
- on GPU the timed function synchronizes (see `timed`), warm-up runs before timing, and
  `_device_timer` below times every round with CUDA events after flushing the L2, so
  neither host launch jitter nor a warm cache flatters the numbers.
"""

from __future__ import annotations

import os
import statistics

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def timed(fn, device: torch.device):
    """Wrap `fn` so that one call includes the device work it launched."""
    if device.type != "cuda":
        return fn

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return out

    return run


def peak_bytes(run, args: tuple, device: str) -> int:
    """Peak memory one `run(*args)` allocates beyond what is already live: the CUDA
    allocator's peak on a GPU; on the CPU the allocator timeline of the profiler (every
    CREATE/DESTROY in time order; the inputs are PREEXISTING and not counted)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run(*args)
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler._memory_profiler import Action

    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(
        activities=activities, profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        run(*args)
    live = peak = 0
    for _, action, _, size in sorted(prof._memory_profile().timeline, key=lambda item: item[0]):
        live += size if action == Action.CREATE else -size if action == Action.DESTROY else 0
        peak = max(peak, live)
    return peak


class Rotation:
    """Cycle through `n` independent input sets, so repeated calls do not all hit a
    cache that a single buffer would sit in."""

    def __init__(self, make, n: int):
        self.sets = [make(i) for i in range(n)]
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % len(self.sets)
        return self.sets[self.i]


def bench_devices() -> list[str]:
    return ["cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(os.cpu_count() or 1)
    yield


# Larger than any GPU's L2 (60 MB on an H200): writing it before a round evicts the inputs.
L2_FLUSH_BYTES = 256 << 20


def event_timed(fn, flush: torch.Tensor):
    """(fn's output, its seconds on the GPU): CUDA events around one call, after a write
    of `flush` (L2_FLUSH_BYTES) that evicts the L2."""
    flush.zero_()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    end.synchronize()
    return out, start.elapsed_time(end) / 1e3


@pytest.fixture(autouse=True)
def _device_timer(request):
    """On a GPU, time each round of `benchmark.pedantic` with CUDA events around the call,
    after a write of 256 MiB that evicts the L2, and record the median of the timed rounds
    as extra_info["device_median_s"] (benchmarks/run.py prefers it to the host clock)."""
    if not torch.cuda.is_available() or "benchmark" not in request.fixturenames:
        yield
        return
    bench = request.getfixturevalue("benchmark")
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    original = bench.pedantic
    seconds: list[float] = []

    def timed_call(target):
        def call(*args, **kwargs):
            out, s = event_timed(lambda: target(*args, **kwargs), flush)
            seconds.append(s)
            return out

        return call

    def pedantic(target, *args, rounds: int = 1, iterations: int = 1, **kwargs):
        out = original(timed_call(target), *args, rounds=rounds, iterations=iterations, **kwargs)
        timed = seconds[-rounds * iterations :]  # the warm-up calls come first
        bench.extra_info["device_median_s"] = statistics.median(timed)
        bench.extra_info["timer"] = "cuda events, L2 flushed"
        return out

    bench.pedantic = pedantic
    yield

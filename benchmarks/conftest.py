"""Shared set-up of the benchmark suite (`pytest benchmarks/ --benchmark-only`).

Conventions every bench_<op>.py follows, so benchmarks/run.py can summarize them:
- `benchmark.group` names the op, pass and shape; one group compares backends on one case;
- `benchmark.extra_info` = {"op", "backend", "baseline" (bool), "shape", "dtype",
  "bytes" (the floor: each input read once, each output written once), "flops"};
- on GPU the timed function synchronizes (see `timed`), inputs rotate among several
  copies so caches don't flatter, and warm-up runs before timing.
"""

from __future__ import annotations

import os

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

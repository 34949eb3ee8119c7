"""sinkhorn: every backend against plain code, eager and under torch.compile, and against
the log-domain reference eager (and compiled, on a GPU).

    PYTHONPATH=$PWD python -m pytest benchmarks/bench_sinkhorn.py --benchmark-only
    PYTHONPATH=$PWD python -m benchmarks.bench_sinkhorn [rounds] [B K T]   # alternating run

"Plain" is what a user would otherwise run, in two spellings: SwAV's own loop
(`reference.swav_sinkhorn_baseline`, 4 full passes per iteration) and lightly's `sinkhorn`
(`reference.lightly_sinkhorn_baseline`, 3: no 1/K step). Which is faster depends on the
device and the compiler, so both are timed, eager and compiled; rows carry
extra_info["plain"] = "eager" | "compiled", and benchmarks/run.py reports every backend
against the faster plain baseline of each kind as well as against each baseline.

Shapes (B, K, iterations): (256, 3000, 3), (4096, 3000, 3), (4096 + 3840, 3000, 3),
(2048, 16384, 10), (16384, 16384, 3), fp32 SwAV-like cosine scores, eps 0.05. On the CPU
the last one is skipped (1 GiB of scores; the baseline alone takes minutes there), and so
are the compiled reference (a compile per shape costs more than the whole run) and the
interpreted Triton backend (a correctness tool, not something to time).

Floors, s = element size: `bytes` is one read of the scores plus one write of the codes,
B*K*(s + 4) (the issue's floor when the matrix fits on chip); `pass_bytes` is what an
exact log-domain algorithm needs when it does not: (T + 1)*B*K*s read + 4*B*K written.
Targets: CPU `cpu` >= 3x the faster plain baseline at (4096, 3000, 3) and no slower
anywhere; GPU >= 5x plain and 2x compiled plain at (4096, 3000, 3), and >= 70% of the
copy bandwidth floor at (16384, 16384, 3). GPU numbers go to benchmarks/results/.

The pytest rounds of one case run back to back, so on a shared machine a load spike
lands on whichever implementation is running. `python -m benchmarks.bench_sinkhorn`
alternates instead (plain, fused, plain, fused, ...: every implementation once per round)
and prints each one's median with its min-max and the ratios to the faster plain
baseline: the CPU figures in the README come from it.
"""

from __future__ import annotations

import os

import pytest
import torch

import seer_kernels as sk
from seer_kernels import _backend, reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GPU_SHAPES = [(256, 3000, 3), (4096, 3000, 3), (4096 + 3840, 3000, 3), (2048, 16384, 10), (16384, 16384, 3)]
CPU_SHAPES = GPU_SHAPES[:4]
SHAPES = GPU_SHAPES if DEVICE.type == "cuda" else CPU_SHAPES
EPSILON = 0.05
# CPU threads (default: every core). On a shared machine SEER_BENCH_THREADS=1 gives
# stable ratios: with cores oversubscribed, every fork/join waits for a descheduled thread.
THREADS = int(os.environ.get("SEER_BENCH_THREADS", os.cpu_count() or 1))
BACKENDS = [b for b in _backend.available_backends(DEVICE, op="sinkhorn") if b != "reference"]
if DEVICE.type == "cpu":
    BACKENDS = [b for b in BACKENDS if b != "triton"]
# The plain spellings, eager and compiled (extra_info["plain"] names the kind).
PLAIN = {
    "lightly_baseline": "eager",
    "swav_baseline": "eager",
    "lightly_baseline_compiled": "compiled",
    "swav_baseline_compiled": "compiled",
}
BASELINES = [*PLAIN, "reference"]
if DEVICE.type == "cuda":
    BASELINES.append("reference_compiled")
IMPLS = [*BACKENDS, *BASELINES]

# One dynamic compile per function serves every shape.
_compiled_swav = torch.compile(reference.swav_sinkhorn_baseline, dynamic=True)
_compiled_lightly = torch.compile(reference.lightly_sinkhorn_baseline, dynamic=True)
_compiled_reference = torch.compile(reference.sinkhorn, dynamic=True)


def _rounds(b: int, k: int, iters: int) -> int:
    work = b * k * (iters + 1)
    return 20 if work < 10_000_000 else (5 if work < 200_000_000 else 3)


def cosine_scores(b: int, k: int) -> torch.Tensor:
    """SwAV-like cosine scores of unit embeddings (dim 128) against unit prototypes."""
    gen = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(b, 128, generator=gen), dim=1)
    p = torch.nn.functional.normalize(torch.randn(k, 128, generator=gen), dim=1)
    return (e @ p.t()).to(DEVICE)


def _impl(name: str):
    if name == "swav_baseline":
        return reference.swav_sinkhorn_baseline
    if name == "swav_baseline_compiled":
        return _compiled_swav
    if name == "lightly_baseline":
        return reference.lightly_sinkhorn_baseline
    if name == "lightly_baseline_compiled":
        return _compiled_lightly
    if name == "reference":
        return reference.sinkhorn
    if name == "reference_compiled":
        return _compiled_reference
    return lambda s, eps, iters: sk.sinkhorn(s, epsilon=eps, iterations=iters, backend=name)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


# impl varies fastest: the implementations of one shape run back to back (fairer on a
# machine whose load drifts).
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", IMPLS)
def test_sinkhorn(benchmark, impl, shape):
    torch.set_num_threads(THREADS)
    b, k, iters = shape
    scores = cosine_scores(b, k)
    fn = _impl(impl)

    def run(s):
        out = fn(s, EPSILON, iters)
        _sync()  # GPU cases time the kernels, not their launch
        return out

    run(scores)  # compile / first-touch outside the timed rounds
    s_bytes = scores.element_size()
    benchmark.group = f"sinkhorn {b}x{k} T={iters} {DEVICE.type}"
    benchmark.extra_info.update(
        {
            "op": "sinkhorn",
            "backend": impl,
            "baseline": impl in BASELINES,
            "plain": PLAIN.get(impl),
            "shape": list(shape),
            "dtype": str(scores.dtype).replace("torch.", ""),
            "bytes": b * k * (s_bytes + 4),
            "pass_bytes": (iters + 1) * b * k * s_bytes + 4 * b * k,
            "threads": THREADS if DEVICE.type == "cpu" else None,
        }
    )
    out = benchmark.pedantic(run, setup=lambda: ((scores,), {}), rounds=_rounds(b, k, iters), warmup_rounds=1)
    if impl not in PLAIN:  # plain code overflows where the scores / eps exceed ~88
        assert torch.isfinite(out).all()


# ------------------------------------------------------------------ alternating run


def _alternating(rounds: int, shape: tuple[int, int, int]) -> None:
    """Every implementation once per round, in a fixed order (plain, fused, plain, fused,
    ...), `rounds` rounds after two warm-up calls each; prints the median and min-max of
    each and every fused backend's ratio to the faster plain baseline (eager)."""
    import statistics
    import time

    torch.set_num_threads(THREADS)
    b, k, iters = shape
    scores = cosine_scores(b, k)
    impls = ["lightly_baseline", *BACKENDS, "swav_baseline", *BACKENDS]
    names = list(dict.fromkeys(impls))
    for name in names * 2:  # warm-up: first touch, codes allocator, kernel tables
        _impl(name)(scores, EPSILON, iters)
        _sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in impls:
            start = time.perf_counter()
            _impl(name)(scores, EPSILON, iters)
            _sync()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    plain = min(("lightly_baseline", "swav_baseline"), key=med.__getitem__)
    print(
        f"sinkhorn {b}x{k} T={iters} {DEVICE.type}, {THREADS} threads, "
        f"ISA {torch.backends.cpu.get_cpu_capability()}, {rounds} rounds"
    )
    for name, ts in times.items():
        ratio = "" if name in PLAIN else f"  {med[plain] / med[name]:.2f}x {plain}"
        print(
            f"  {name:18s} median {med[name]:8.2f} ms  (min {min(ts) * 1e3:.2f}, max {max(ts) * 1e3:.2f}){ratio}"
        )


if __name__ == "__main__":
    import sys

    args = [int(a) for a in sys.argv[1:]]
    _alternating(args[0] if args else 15, tuple(args[1:4]) if len(args) >= 4 else (4096, 3000, 3))

"""Memory: a training run's resident memory stays flat after warm-up, and the CPU ops stay
within the workspace their module docstrings state, at K = 65536 prototypes.

Resident memory (RSS) is what an out-of-memory kill sees, and it also counts C++ and
BLAS allocations that no Python-level tracer does. The trainer logs it with every metrics
record (`rss_mb`); each op runs in a fresh process whose peak RSS is compared with the
docstring's bound plus a fixed slack. The 2000-step soak is marked slow
(`make test-slow`); CI runs a 240-step form of it."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **extra}


# ------------------------------------------------------------------------ training soak


def rss_growth(samples: list[tuple[int, float]], warmup_steps: int) -> tuple[float, float]:
    """RSS growth (MiB) of the records after `warmup_steps`, two ways: the least-squares
    slope times the span of steps, and the median of the last quarter of the records minus
    the median of the first. Medians and a fit over every record ride out the spikes of a
    checkpoint write; a leak of even a few KiB per step moves both."""
    kept = [(s, r) for s, r in samples if s > warmup_steps]
    assert len(kept) >= 8, f"only {len(kept)} records after warm-up"
    steps, rss = [float(s) for s, _ in kept], [r for _, r in kept]
    slope = statistics.linear_regression(steps, rss).slope
    q = len(kept) // 4
    return slope * (steps[-1] - steps[0]), statistics.median(rss[-q:]) - statistics.median(rss[:q])


def test_rss_growth_sees_a_slow_leak_and_ignores_spikes():
    flat = [(s, 900.0 + (9.0 if s % 50 == 0 else 0.0) + 0.5 * (s % 3)) for s in range(5, 241, 5)]
    leak = [(s, r + 0.1 * s) for s, r in flat]  # 100 KiB per step
    fit, medians = rss_growth(flat, 60)
    assert abs(fit) < 2 and abs(medians) < 2
    fit, medians = rss_growth(leak, 60)
    assert fit > 16 and medians > 12


# The soak's only time limit catches a hang, never a slow machine: the run is stopped when
# no metrics record has come for STALL_FACTOR times the longest gap between records so far
# (the measured time of log_every steps, checkpoint writes included), and never sooner than
# STALL_FLOOR_S; the first record (imports, start-up, the first steps) gets START_S.
STALL_FACTOR, STALL_FLOOR_S, START_S = 10, 120.0, 600.0


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            break
    return out


def _train_rss(tmp_path: Path, overrides: list[str]) -> list[tuple[int, float]]:
    """Runs the default config with `overrides` in a fresh process (so that nothing else
    shares its heap) and returns (step, rss_mb) of its metrics records. A run that stalls
    (see STALL_FACTOR) is killed and fails the test, however long the healthy run takes."""
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "seer.train", "-c", str(ROOT / "configs" / "default.yaml"),
        f"run_dir={run}", "train.progress=false", "train.export_backbone=false", *overrides,
    ]  # fmt: skip
    with open(tmp_path / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        seen, last_change, longest_gap = 0, time.monotonic(), 0.0
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                now, count = time.monotonic(), len(_records(run / "metrics.jsonl"))
                if count > seen:
                    if seen:
                        longest_gap = max(longest_gap, now - last_change)
                    seen, last_change = count, now
                    continue
                limit = max(STALL_FLOOR_S, STALL_FACTOR * longest_gap) if seen else START_S
                if now - last_change > limit:
                    proc.kill()
                    proc.wait()
                    log_text = (tmp_path / "train.log").read_text()[-3000:]
                    pytest.fail(
                        f"no metrics record for {now - last_change:.0f} s after {seen} records: hung?\n{log_text}"
                    )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, (tmp_path / "train.log").read_text()[-4000:]
    records = _records(run / "metrics.jsonl")
    if "rss_mb" not in records[0]:
        pytest.skip("no /proc/self/statm: resident memory is not logged on this platform")
    return [(r["step"], r["rss_mb"]) for r in records]


def test_training_rss_is_flat_after_warmup(tmp_path):
    """240 steps (~30 s on two idle cores) of the default config at 16 px, batch 16:
    prototypes unfrozen at step 20, a checkpoint every 60 steps; after the first 60 steps
    RSS grows by less than 16 MiB (a leak of 100 KiB per step would show 18). No wall-clock
    limit: only a stall of the run fails it (_train_rss)."""
    overrides = [
        "train.max_steps=240",
        "train.batch_size=16",
        "data.image_size=16",
        "augment.global_size=16",
        "augment.local_size=8",
        "swav.freeze_prototypes_steps=20",
        "train.log_every=5",
        "train.checkpoint_every=60",
    ]
    samples = _train_rss(tmp_path, overrides)
    fit, medians = rss_growth(samples, warmup_steps=60)
    assert fit < 16 and medians < 16, f"RSS grew {fit:.1f} MiB (fit), {medians:.1f} MiB (medians): {samples}"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_training_rss_soak_2000_steps(tmp_path):
    """The default config (regnetx_002, 2x32 + 4x16 crops, K = 64, checkpoints at epoch
    ends) at batch 32 for 2000 steps, 36 epochs: after 500 steps of warm-up RSS grows by
    less than 32 MiB (measured: +1 MiB in 5.7 min on two cores)."""
    samples = _train_rss(tmp_path, ["train.max_steps=2000", "train.batch_size=32"])
    fit, medians = rss_growth(samples, warmup_steps=500)
    assert fit < 32 and medians < 32, f"RSS grew {fit:.1f} MiB (fit), {medians:.1f} MiB (medians): {samples}"


# ------------------------------------------------------------------------ ops at large K

# Runs one op's phases in a fresh process and prints {phase: peak RSS growth in bytes}.
# Each phase starts with the peak reset to the current RSS (Linux's clear_refs; where that
# is refused the peak of earlier phases can only raise the figure, never hide growth).
# MALLOC_MMAP_THRESHOLD_ (set by the test) keeps large blocks out of the heap, so memory
# freed before a phase is returned to the system, not silently reused by the phase.
PHASE = textwrap.dedent(
    """
    from seer.monitor import peak_rss_mb, rss_mb

    def phase(fn):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        before = rss_mb()
        out = fn()
        return out, int((peak_rss_mb() - before) * 2**20)
    """
)
OP_SCRIPT = PHASE + textwrap.dedent(
    """
    import json, sys
    import torch
    from seer_kernels import prototype_cross_entropy, prototype_scores, sinkhorn, swav_cross_entropy

    op, threads = sys.argv[1], int(sys.argv[2])
    n, k, d, v, a = (int(x) for x in sys.argv[3:8])
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    peaks = {}
    if op == "sinkhorn":
        sinkhorn(torch.randn(64, 1024), backend="cpu")  # threads and kernels set up first
        scores = torch.randn(n, k, generator=g)
        _, peaks["forward"] = phase(lambda: sinkhorn(scores, epsilon=0.05, iterations=3, backend="cpu"))
    elif op == "prototype_scores":
        e0, p0 = torch.randn(8, d, requires_grad=True), torch.randn(32, d, requires_grad=True)
        # backward(grad) as measured below: the first call with an explicit gradient
        # imports torch.fx.experimental.symbolic_shapes (sympy, ~32 MiB), not the op's.
        s0 = prototype_scores(e0, p0, backend="cpu")
        s0.backward(torch.ones_like(s0))
        e = torch.randn(n, d, generator=g).requires_grad_()
        p = torch.randn(k, d, generator=g).requires_grad_()
        grad = torch.randn(n, k, generator=g)
        scores, peaks["forward"] = phase(lambda: prototype_scores(e, p, backend="cpu"))
        _, peaks["backward"] = phase(lambda: scores.backward(grad))
    elif op == "prototype_cross_entropy":
        e0, p0 = torch.randn(v, 8, d, requires_grad=True), torch.randn(32, d, requires_grad=True)
        prototype_cross_entropy(e0, p0, torch.rand(a, 8, 32), backend="cpu").backward()
        e = torch.randn(v, n, d, generator=g).requires_grad_()
        p = torch.randn(k, d, generator=g).requires_grad_()
        codes = torch.rand(a, n, k, generator=g)
        loss, peaks["forward"] = phase(lambda: prototype_cross_entropy(e, p, codes, 0.1, backend="cpu"))
        _, peaks["backward"] = phase(lambda: loss.backward())
    else:
        x0 = torch.randn(v, 8, 256, requires_grad=True)
        swav_cross_entropy(x0, torch.rand(a, 8, 256), backend="cpu").backward()
        x = torch.randn(v, n, k, generator=g).requires_grad_()
        codes = torch.rand(a, n, k, generator=g)
        loss, peaks["forward"] = phase(lambda: swav_cross_entropy(x, codes, 0.1, backend="cpu"))
        _, peaks["backward"] = phase(lambda: loss.backward())
    print(json.dumps(peaks))
    """
)

K, D, V, A, THREADS = 65536, 128, 4, 2, 2
# What the bounds leave out: the BLAS GEMM's packing buffers (measured ~3 MiB per thread
# with MKL), page and allocator rounding, Python objects. An extra (B, K) fp32 array at
# these sizes is 64-128 MiB, far above it.
SLACK = 16 * MIB


def _pages(nbytes: int, page: int = 2 * MIB) -> int:
    return -(-nbytes // page) * page


def _bounds(op: str, n: int) -> dict[str, int]:
    """Each phase's peak memory beyond its inputs, in bytes, as the op's docstring states
    it (fp32, T = THREADS threads; K is a multiple of the vector width)."""
    t, f32, f64 = THREADS, 4, 8
    if op == "sinkhorn":
        chunks = max(16, -(-n // 256))
        return {"forward": _pages(n * K * f32) + (2 * chunks + 8 * t + 5) * K * f32}
    if op == "prototype_scores":
        return {
            "forward": n * K * f32 + (n + K) * D * f32 + (n + K) * f32,
            "backward": 2 * (n + K) * D * f32 + 3 * D * f32 * t,
        }
    if op == "prototype_cross_entropy":
        # Returned gradients (V B D + K D); E_hat and grad E_hat (2 V B D), P_hat (K D),
        # the 32 MiB block buffer, 16 grad E_hat partials of <= 1024 rows, per-row doubles,
        # per-thread code segments (A x 1024).
        grads = (V * n * D + K * D) * f32
        work = 2 * V * n * D * f32 + K * D * f32 + 32 * MIB + 16 * 1024 * D * f32
        rows = (A + 8) * V * n * f64 + A * 1024 * f64 * t
        return {"forward": grads + work + rows, "backward": grads}
    scratch = (A + 2) * K * f32 * t
    return {"forward": V * n * f64 + n * f64 + scratch, "backward": V * n * K * f32 + scratch}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "op, n",
    [
        ("sinkhorn", 512),
        ("prototype_scores", 512),
        ("swav_cross_entropy", 256),
        ("prototype_cross_entropy", 256),
    ],
)
def test_cpu_op_memory_at_large_k_stays_within_the_documented_workspace(op, n):
    """K = 65536 prototypes: sinkhorn on (512, K) scores, prototype scores of 512 x 128
    embeddings, the cross-entropy of 4 crops x 256 samples against 2 code crops, and the
    fused head on 4 crops x 256 samples of 128-dim embeddings."""
    from seer_kernels import _backend

    if _backend.extension() is None:
        pytest.skip("seer_kernels._C is not built")
    if not Path("/proc/self/statm").exists():
        pytest.skip("needs Linux's /proc for resident memory")
    args = [op, str(THREADS), str(n), str(K), str(D), str(V), str(A)]
    bounds = _bounds(op, n)
    done = subprocess.run(
        [sys.executable, "-c", OP_SCRIPT, *args],
        env=_env(MALLOC_MMAP_THRESHOLD_=str(MIB), OMP_NUM_THREADS=str(THREADS)),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    for name, bound in bounds.items():
        assert peaks[name] <= bound + SLACK, (
            f"{op} {name}: peak {peaks[name] / MIB:.1f} MiB over its inputs, "
            f"documented bound {bound / MIB:.1f} MiB + {SLACK // MIB} MiB slack"
        )


# ------------------------------------------------------------ the fused SwAV head

# Forward + backward of the SwAV head from embeddings, prototypes and codes, in a fresh
# process: the fused op, today's fused ops composed (prototype_scores into
# swav_cross_entropy) and plain PyTorch SwAV code (F.normalize(e) @ F.normalize(p).T into
# lightly's per-pair log-softmax loop). Prints the peak RSS growth in bytes.
HEAD_SCRIPT = PHASE + textwrap.dedent(
    """
    import sys
    import torch
    from benchmarks.bench_prototype_cross_entropy import head_fn

    which = sys.argv[1]
    v, b, d, k, a = (int(x) for x in sys.argv[2:7])
    fn = head_fn(which)
    g = torch.Generator().manual_seed(0)
    e0, p0 = torch.randn(v, 4, d, requires_grad=True), torch.randn(16, d, requires_grad=True)
    fn(e0, p0, torch.softmax(torch.randn(a, 4, 16), -1)).backward()  # kernels and threads set up
    e = torch.randn(v, b, d, generator=g).requires_grad_()
    p = torch.randn(k, d, generator=g).requires_grad_()
    codes = torch.softmax(torch.randn(a, b, k, generator=g), -1)
    print(phase(lambda: fn(e, p, codes).backward())[1])
    """
)


@pytest.mark.timeout(900)
def test_fused_head_memory_against_the_composition_and_plain_swav():
    """(V, B, D, K) = (10, 256, 256, 65536), fp32, A = 2: the fused head's peak RSS growth
    over forward and backward is at most 1/4 of today's fused ops composed and 1/8 of plain
    SwAV code (measured on the 2-core machines: 133-169 MiB, 1.29 GiB, 2.4 GiB). The
    plain run holds 2.4 GB for ~15 s."""
    from seer_kernels import _backend

    if _backend.extension() is None:
        pytest.skip("seer_kernels._C is not built")
    if not Path("/proc/self/statm").exists():
        pytest.skip("needs Linux's /proc for resident memory")
    peaks = {}
    for which in ("fused", "composition", "plain"):
        done = subprocess.run(
            [sys.executable, "-c", HEAD_SCRIPT, which, "10", "256", "256", "65536", "2"],
            env=_env(MALLOC_MMAP_THRESHOLD_=str(MIB), OMP_NUM_THREADS=str(THREADS)),
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        peaks[which] = int(done.stdout.strip().splitlines()[-1])
    mib = {name: round(value / MIB, 1) for name, value in peaks.items()}
    assert peaks["fused"] <= peaks["composition"] / 4, f"peak RSS growth (MiB): {mib}"
    assert peaks["fused"] <= peaks["plain"] / 8, f"peak RSS growth (MiB): {mib}"

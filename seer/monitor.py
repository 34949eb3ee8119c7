"""What a person sees: step timing by phase, JSON-lines metrics, TensorBoard (when
installed), the loss/lr plot and the end-of-run summary; and the collapse indicators.

A SwAV run that collapses sits at loss ln K with features that no longer depend on the
image; `prototype_stats` measures exactly that: the spread of each prototype's score
across the batch (0 when the features are constant) and the fraction of prototypes that
are the best match of at least one sample.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch

PHASES = ("data", "forward", "loss", "backward", "optimizer")


class PhaseTimer:
    """Accumulates wall time per phase of a step. On CUDA it records events instead of
    synchronizing, and reads them only when totals are asked for."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = defaultdict(float)
        self._pending: list[tuple[str, object, object]] = []
        self._last_name: str | None = None
        self._last_mark: object = None

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._last_mark = self._now()

    def mark(self, name: str) -> None:
        """Close the phase `name`, which began at the previous mark."""
        now = self._now()
        if self.cuda:
            self._pending.append((name, self._last_mark, now))
        else:
            self.totals[name] += now - self._last_mark
        self._last_mark = now

    def collect(self) -> dict[str, float]:
        if self._pending:
            self._pending[-1][2].synchronize()
            for name, a, b in self._pending:
                self.totals[name] += a.elapsed_time(b) / 1000.0
            self._pending.clear()
        return dict(self.totals)

    def reset(self) -> dict[str, float]:
        """The totals so far, then zero: the warm-up steps' split apart from the steady one."""
        totals = self.collect()
        self.totals.clear()
        return totals


class Throughput:
    """Steady-state images/s, told apart from the warm-up and the checkpoint writes.

    The first `warmup_steps` steps of a session (compilation, cudnn autotuning, the
    allocator's growth, the DataLoader's first batches) and every checkpoint write are
    timed on their own. The steady rate is the images of the later steps over the wall time
    from the end of the warm-up to the last step, less the checkpoint writes in between.
    Wall time between marks, not the sum of per-step host times: with CUDA's asynchronous
    launches a step's host time is not its device time, so the device is synchronized at
    the boundaries (end of warm-up, around a checkpoint, last step) and nowhere else."""

    def __init__(self, device: torch.device, warmup_steps: int) -> None:
        self.device, self.warmup_steps = device, warmup_steps
        self.steps = self.steady_steps = self.checkpoints = 0
        self.warmup_images = self.steady_images = 0
        self.checkpoint_s = 0.0
        self._ckpt_warmup = self._ckpt_steady = self._ckpt_steady_at_mark = 0.0
        self._start = self._warm_end = self._last = time.perf_counter()
        self._window = (self._start, 0, 0.0)  # (time, images, checkpoint_s) at the last window

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        """The clock starts (before the first batch is asked for)."""
        self._start = self._warm_end = self._last = time.perf_counter()
        self._window = (self._start, 0, self.checkpoint_s)

    @property
    def warming_up(self) -> bool:
        return self.steps < self.warmup_steps

    def mark_step(self, images: int, last: bool = False) -> None:
        """One step done (`images` over all ranks); `last`: the session's final step."""
        if self.steps + 1 == self.warmup_steps or last:
            self._sync()
        now = time.perf_counter()
        self.steps += 1
        if self.steps <= self.warmup_steps:
            self.warmup_images += images
            self._warm_end = now
        else:
            self.steady_images += images
            self.steady_steps += 1
            self._ckpt_steady_at_mark = self._ckpt_steady
        self._last = now

    @contextlib.contextmanager
    def checkpoint(self) -> Iterator[None]:
        """Times a checkpoint write, which no rate includes."""
        self._sync()  # the steps' queued work is theirs, not the checkpoint's
        t = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            dt = time.perf_counter() - t
            self.checkpoint_s += dt
            self.checkpoints += 1
            if self.warming_up:
                self._ckpt_warmup += dt
            else:
                self._ckpt_steady += dt

    @property
    def warmup_s(self) -> float:
        return self._warm_end - self._start - self._ckpt_warmup

    @property
    def steady_s(self) -> float:
        if not self.steady_steps:
            return 0.0
        return self._last - self._warm_end - self._ckpt_steady_at_mark

    def steady_rate(self) -> float | None:
        """Images/s after the warm-up; None while no steady step is done."""
        return self.steady_images / max(self.steady_s, 1e-9) if self.steady_steps else None

    def rate(self) -> float:
        """The steady rate, or the warm-up's for a session of warm-up steps only."""
        steady = self.steady_rate()
        return steady if steady is not None else self.warmup_images / max(self.warmup_s, 1e-9)

    def window_rate(self) -> float:
        """Images/s since the previous call, up to the last step, checkpoints excluded."""
        t, images, ckpt = self._window
        done = self.warmup_images + self.steady_images
        elapsed = self._last - t - (self.checkpoint_s - ckpt)
        self._window = (self._last, done, self.checkpoint_s)
        return (done - images) / max(elapsed, 1e-9)


# Dense 16-bit (bf16/fp16) tensor-core peaks, TFLOP/s, from NVIDIA's data sheets (the
# sparse figures there are twice these). The first substring of the device name wins.
PEAK_TFLOPS_16BIT = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("V100", 125.0),
)


def device_peak_tflops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak for the run's precision; None where it is not in the table
    (CPUs, other GPUs, fp32: set train.peak_tflops to give it)."""
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS_16BIT if key in name), None)


@torch.no_grad()
def prototype_stats(scores: torch.Tensor) -> dict[str, float]:
    """scores (N, K) of one step -> spread (mean over prototypes of the std over samples)
    and usage (distinct argmax prototypes / K)."""
    s = scores.detach().float()
    spread = s.std(dim=0).mean() if s.shape[0] > 1 else s.new_zeros(())
    usage = torch.unique(s.argmax(dim=1)).numel() / s.shape[1]
    return {"proto_spread": float(spread), "proto_usage": float(usage)}


def rss_mb() -> float | None:
    """Resident memory of this process now (Linux /proc; None elsewhere). The peak alone
    (ru_maxrss) cannot show a slow leak once the first steps have set it."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM where Linux's /proc has it, since
    ru_maxrss starts at the RSS of the parent that forked the process (a launcher, a
    test session) and can report the parent's peak instead of ours."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        out["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_cuda_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    return out


class MetricsLog:
    """metrics.jsonl (appended across resumes) and TensorBoard scalars when available."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def write(self, record: dict) -> None:
        """Appends `record`, stamped with the resident memory now (rss_mb), so a leak
        shows in the metrics of any long run, not only in a soak test."""
        if not self.enabled:
            return
        rss = rss_mb()
        if rss is not None:
            record = {**record, "rss_mb": round(rss, 1)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path, upto_step: int | None = None) -> list[dict]:
    """Records of metrics.jsonl, one per step: after a resume, the records an interrupted
    run wrote beyond its last checkpoint are superseded by the new ones; a line cut short
    by a killed process is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed process
            continue
    by_step: dict[int, dict] = {}
    for r in records:
        if "loss" in r and (upto_step is None or r["step"] <= upto_step):
            by_step[r["step"]] = r
    return [by_step[s] for s in sorted(by_step)]


def plot(run_dir: Path, n_prototypes: int) -> Path | None:
    """training.png: loss (with ln K, the collapse level) and learning rate against step."""
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(steps, [r["loss"] for r in records], label="SwAV loss")
    ax1.axhline(
        math.log(n_prototypes), color="gray", ls="--", lw=1, label=f"ln K = {math.log(n_prototypes):.2f}"
    )
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(steps, [r["lr"] for r in records], color="tab:orange")
    ax2.set_xlabel("step")
    ax2.set_ylabel("learning rate")
    fig.tight_layout()
    out = run_dir / "training.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _throughput_line(summary: dict) -> str:
    if summary.get("steady_steps"):
        basis = (
            f"steady state ({summary['steady_steps']} steps after {summary['warmup_steps']} warm-up steps, "
            "checkpoint writes excluded)"
        )
    else:
        basis = f"warm-up only (all {summary['warmup_steps']} steps of the session were warm-up)"
    line = f"images/s {summary['images_per_s']:.1f} (global), {basis}"
    if summary.get("achieved_tflops") is not None:
        line += (
            f"; {summary['tflop_per_image']:.3g} TFLOP/image (model, fwd+bwd): "
            f"{summary['achieved_tflops']:.3g} TFLOP/s per device"
        )
        if summary.get("peak_fraction") is not None:
            line += f", {100 * summary['peak_fraction']:.1f}% of the device's {summary['peak_tflops']:.0f} TFLOP/s peak"
    return line


def _wall_line(summary: dict) -> str:
    return (
        f"wall {summary['wall_s']:.1f} s: warm-up {summary['warmup_s']:.1f} s ({summary['warmup_steps']} steps), "
        f"steady {summary['steady_s']:.1f} s ({summary['steady_steps']} steps), "
        f"checkpoints {summary['checkpoint_s']:.1f} s ({summary['checkpoint_writes']} writes), "
        f"other {summary['other_s']:.1f} s"
    )


def format_summary(summary: dict) -> str:
    t = summary.get("time_s", {})
    total = sum(t.get(p, 0.0) for p in PHASES) or 1.0
    split = ", ".join(f"{p} {100 * t.get(p, 0.0) / total:.0f}%" for p in PHASES)
    which = "steady steps" if summary.get("steady_steps") else "warm-up steps"
    mem = ", ".join(f"{k} {v:.0f}" for k, v in summary.get("memory", {}).items())
    lines = [
        f"steps {summary['steps_run']} this session (step {summary['step']}/{summary['total_steps']}), "
        f"epoch {summary['epoch']}",
        f"final loss {summary['final_loss']:.4f} (ln K = {summary['ln_k']:.4f}), "
        f"prototype usage {summary.get('proto_usage', float('nan')):.2f}, spread {summary.get('proto_spread', float('nan')):.4f}",
        _throughput_line(summary),
        _wall_line(summary),
        f"time split ({which}): {split}",
        f"peak memory (MB): {mem}",
        f"skipped images {summary['skipped_images']}, non-finite steps skipped {summary['nonfinite_steps']}",
    ]
    return "\n".join(lines)

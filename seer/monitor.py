"""What a person sees: step timing by phase, JSON-lines metrics, TensorBoard (when
installed), the loss/lr plot and the end-of-run summary; and the collapse indicators.

A SwAV run that collapses sits at loss ln K with features that no longer depend on the
image; `prototype_stats` measures exactly that: the spread of each prototype's score
across the batch (0 when the features are constant) and the fraction of prototypes that
are the best match of at least one sample.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections import defaultdict
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


def format_summary(summary: dict) -> str:
    t = summary.get("time_s", {})
    total = sum(t.get(p, 0.0) for p in PHASES) or 1.0
    split = ", ".join(f"{p} {100 * t.get(p, 0.0) / total:.0f}%" for p in PHASES)
    mem = ", ".join(f"{k} {v:.0f}" for k, v in summary.get("memory", {}).items())
    lines = [
        f"steps {summary['steps_run']} this session (step {summary['step']}/{summary['total_steps']}), "
        f"epoch {summary['epoch']}",
        f"final loss {summary['final_loss']:.4f} (ln K = {summary['ln_k']:.4f}), "
        f"prototype usage {summary.get('proto_usage', float('nan')):.2f}, spread {summary.get('proto_spread', float('nan')):.4f}",
        f"images/s {summary['images_per_s']:.1f} (global), wall {summary['wall_s']:.1f} s",
        f"time split: {split}",
        f"memory (MB): {mem}",
        f"skipped images {summary['skipped_images']}, non-finite steps skipped {summary['nonfinite_steps']}",
    ]
    return "\n".join(lines)

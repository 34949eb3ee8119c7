"""The fused SwAV head against today's fused ops composed, on the CPU, in one run: time of
forward + backward (interleaved rounds, so a load change on a shared machine hits both)
and peak RSS growth in fresh processes, at the issue's (V, B, D, K) = (8, 64, 128, 3000)
and (10, 256, 256, 65536), A = 2, fp32. Plain PyTorch SwAV code (F.normalize(e) @
F.normalize(p).T into lightly's per-pair log-softmax) is timed at the small shape and
measured for memory at the large one.

    python -m benchmarks.head_cpu [--out benchmarks/results/prototype-cross-entropy]

Writes head-cpu-<date>.json and .md there (a subfolder: the README's performance section
reads only benchmarks/results/*.json). The machine, the load average before and after,
torch's thread count and CPU capability are recorded with the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import run
from benchmarks.bench_prototype_cross_entropy import head_fn, inputs

ROOT = Path(__file__).resolve().parent.parent
SMALL, LARGE = (8, 64, 128, 3000), (10, 256, 256, 65536)
ROUNDS = {SMALL: 31, LARGE: 7}


def timings(shape, names: list[str], rounds: int) -> dict:
    e, p, codes = inputs("cpu", shape)
    e.requires_grad_(True)
    p.requires_grad_(True)
    fns = {name: head_fn(name) for name in names}
    for fn in fns.values():  # first touch, thread pools, kernels selected
        torch.autograd.grad(fn(e, p, codes), (e, p))
    seconds = {name: [] for name in names}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            torch.autograd.grad(fn(e, p, codes), (e, p))
            seconds[name].append(time.perf_counter() - start)
    out = {}
    for name, xs in seconds.items():
        out[name] = {
            "median_ms": 1e3 * statistics.median(xs),
            "min_ms": 1e3 * min(xs),
            "max_ms": 1e3 * max(xs),
        }
    for name in names:
        if name != "fused":
            out[name]["fused_over_this"] = out["fused"]["median_ms"] / out[name]["median_ms"]
    return out


def peak_rss(which: str, shape) -> float:
    """Peak RSS growth (MiB) of one forward + backward in a fresh process
    (tests/test_memory.py's script)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_memory import HEAD_SCRIPT, MIB

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.update(MALLOC_MMAP_THRESHOLD_=str(MIB))
    done = subprocess.run(
        [sys.executable, "-c", HEAD_SCRIPT, which, *(str(x) for x in shape), "2"],
        env=env, capture_output=True, text=True, timeout=900, cwd=ROOT, check=True,
    )  # fmt: skip
    return int(done.stdout.strip().splitlines()[-1]) / MIB


def _markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        f"Machine: {m['cpu']} ({m['capability']}), {m['threads']} torch threads, torch {m['torch']}; "
        f"{m['date']}; load average {m['load_before']} before, {m['load_after']} after.",
        "",
        "| (V, B, D, K) | fused ms (min-max) | composition ms (min-max) | fused / composition | plain ms | rounds |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in data["time"]:
        t = row["ms"]
        plain = t.get("plain", {}).get("median_ms")
        lines.append(
            f"| {tuple(row['shape'])} | {t['fused']['median_ms']:.1f} ({t['fused']['min_ms']:.1f}-{t['fused']['max_ms']:.1f}) "
            f"| {t['composition']['median_ms']:.1f} ({t['composition']['min_ms']:.1f}-{t['composition']['max_ms']:.1f}) "
            f"| {t['composition']['fused_over_this']:.2f} | {'' if plain is None else f'{plain:.1f}'} | {row['rounds']} |"
        )
    mem = data["memory"]
    lines += [
        "",
        f"Peak RSS growth of forward + backward at {tuple(mem['shape'])}, fp32, fresh process: "
        f"fused {mem['MiB']['fused']:.1f} MiB, composition {mem['MiB']['composition']:.1f} MiB "
        f"({mem['MiB']['fused'] / mem['MiB']['composition']:.3f}x), plain {mem['MiB']['plain']:.1f} MiB "
        f"({mem['MiB']['fused'] / mem['MiB']['plain']:.3f}x).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prototype-cross-entropy"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    data = {
        "machine": {
            "cpu": run.cpu_model(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "date": dt.date.today().isoformat(),
            "load_before": [round(x, 2) for x in load_before],
        },
        "time": [],
    }
    for shape, names in ((SMALL, ["fused", "composition", "plain"]), (LARGE, ["fused", "composition"])):
        data["time"].append(
            {"shape": list(shape), "rounds": ROUNDS[shape], "ms": timings(shape, names, ROUNDS[shape])}
        )
        print(json.dumps(data["time"][-1]), flush=True)
    data["memory"] = {
        "shape": list(LARGE),
        "MiB": {w: peak_rss(w, LARGE) for w in ("fused", "composition", "plain")},
    }
    data["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"head-cpu-{data['machine']['date']}"
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    stem.with_suffix(".md").write_text(_markdown(data))
    print(_markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

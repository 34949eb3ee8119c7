"""`make bench`: run the benchmark suite, then write benchmarks/results/<machine>-<date>.json,
a markdown summary (speed-up of every backend over each baseline, and over the fastest
plain one of each kind) and a PNG bar chart, and refresh the README's performance section
from the results folder.

    python -m benchmarks.run [--out DIR] [-k EXPR] [--no-readme] [--time-budget SECONDS]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


# ----------------------------------------------------------------- machine ceilings


def _median_seconds(fn, repeat: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def ceilings(device: torch.device) -> dict:
    """Measured copy bandwidth (bytes read + written per second) and matmul rate: the
    ceilings every GB/s and TFLOP/s figure is read against."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB / 128 MiB of fp32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    copy = _median_seconds(lambda: dst.copy_(src), 10, device)
    size = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    mm = _median_seconds(lambda: a @ b, 10, device)
    return {
        "copy_GBps": 2 * src.numel() * 4 / copy / 1e9,
        "matmul_TFLOPs": 2 * size**3 / mm / 1e12,
        "matmul_dtype": str(dtype).replace("torch.", ""),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict:
    info = {
        "date": dt.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": torch.get_num_threads(),
        "device": device.type,
        # CPU timings differ between machines with the CPU and its vector ISA (oneDNN's and
        # our kernels' paths differ between AVX2 and AVX-512), so results name both.
        "cpu_model": cpu_model(),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    try:
        from seer_kernels import _backend

        info["extension"] = _backend.build_info()
    except Exception as exc:  # report, never fail the benchmark on it
        info["extension"] = f"unavailable: {exc}"
    return info


def machine_tag(info: dict) -> str:
    name = info.get("gpu") or f"cpu{info['cores']}"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


# ---------------------------------------------------------------------- summarizing


def rows_from_pytest_json(data: dict) -> list[dict]:
    rows = []
    for bench in data.get("benchmarks", []):
        extra = bench.get("extra_info", {})
        stats = bench["stats"]
        row = {
            "group": bench.get("group") or bench["name"],
            "name": bench["name"],
            "op": extra.get("op", ""),
            "backend": extra.get("backend", bench["name"]),
            "baseline": bool(extra.get("baseline", False)),
            "shape": str(extra.get("shape", "")),
            "dtype": str(extra.get("dtype", "")),
            # GPU rounds are timed with CUDA events (benchmarks/conftest.py).
            "median_s": extra.get("device_median_s", stats["median"]),
            "bytes": extra.get("bytes"),
            "flops": extra.get("flops"),
            "peak_mem_bytes": next(
                (extra[k] for k in ("peak_mem_bytes", "peak_memory_bytes", "peak_bytes") if k in extra), None
            ),
            "extra_info": extra,
        }
        if row["bytes"]:
            row["GBps"] = row["bytes"] / row["median_s"] / 1e9
        if row["flops"]:
            row["TFLOPs"] = row["flops"] / row["median_s"] / 1e12
        rows.append(row)
    return rows


def fastest_plain(baselines: list[dict]) -> dict[str, dict]:
    """The fastest baseline of each plain kind in a group: {"eager": row, "compiled": row}
    among those whose extra_info names a kind ("plain": "eager" | "compiled"; an op with
    several plain spellings, as sinkhorn has SwAV's and lightly's, marks them all)."""
    best: dict[str, dict] = {}
    for b in baselines:
        kind = b.get("extra_info", {}).get("plain")
        if kind and (kind not in best or b["median_s"] < best[kind]["median_s"]):
            best[kind] = b
    return best


def speedups(rows: list[dict]) -> list[dict]:
    """For each group: every non-baseline backend against every baseline of the group,
    and against the fastest plain baseline of each kind ("vs_plain")."""
    out = []
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    for group, members in groups.items():
        baselines = [r for r in members if r["baseline"]]
        plain = fastest_plain(baselines)
        for r in members:
            if r["baseline"]:
                continue
            entry = {"group": group, "backend": r["backend"], "median_ms": r["median_s"] * 1e3}
            if r.get("peak_mem_bytes"):
                entry["peak_MiB"] = r["peak_mem_bytes"] / 2**20
            if "GBps" in r:
                entry["GBps"] = r["GBps"]
            if "TFLOPs" in r:
                entry["TFLOPs"] = r["TFLOPs"]
            entry["vs"] = {b["backend"]: b["median_s"] / r["median_s"] for b in baselines}
            if plain:
                entry["vs_plain"] = {
                    kind: {"baseline": b["backend"], "speedup": b["median_s"] / r["median_s"]}
                    for kind, b in sorted(plain.items(), key=lambda kv: kv[0] != "eager")
                }
            out.append(entry)
    return out


def markdown(info: dict, ceil: dict, table: list[dict]) -> str:
    cpu = ", ".join(x for x in (info["cpu"], info.get("cpu_model"), info.get("cpu_isa")) if x)
    where = info.get("gpu") or f"{cpu} ({info['cores']} threads)"
    lines = [
        f"Machine: {where}; torch {info['torch']}, triton {info['triton']}; {info['date']}.",
        f"Ceilings measured in the same run: copy {ceil['copy_GBps']:.1f} GB/s, "
        f"matmul {ceil['matmul_TFLOPs']:.2f} TFLOP/s ({ceil['matmul_dtype']}).",
        "",
    ]
    plain = any("vs_plain" in e for e in table)
    if plain:
        lines.append(
            '"vs fastest plain": against the faster plain spelling of each kind in the same run '
            "(eager, then compiled), named after the ratio."
        )
        lines.append("")
    lines += [
        "| case | backend | ms | GB/s | peak MiB |"
        + (" vs fastest plain |" if plain else "")
        + " speed-up vs baselines |",
        "| --- | --- | ---: | ---: | ---: |" + (" --- |" if plain else "") + " --- |",
    ]
    for e in table:
        gbps = f"{e['GBps']:.1f}" if "GBps" in e else ""
        mem = f"{e['peak_MiB']:.1f}" if "peak_MiB" in e else ""
        vs = ", ".join(f"{v:.2f}x {k}" for k, v in e["vs"].items())
        fastest = ", ".join(
            f"**{p['speedup']:.2f}x** {p['baseline']}" for p in e.get("vs_plain", {}).values()
        )
        cells = (
            [e["group"], e["backend"], f"{e['median_ms']:.3f}", gbps, mem]
            + ([fastest] if plain else [])
            + [vs]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(table: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, names = [], [], []
    for e in table:
        for base, ratio in e["vs"].items():
            labels.append(f"{e['group']}\n{e['backend']} vs {base}")
            values.append(ratio)
            names.append(base)
    if not values:
        return
    fig, ax = plt.subplots(figsize=(10, max(3, 0.32 * len(values))))
    colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
    ax.barh(range(len(values)), values, color=colors)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(values)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speed-up (baseline time / backend time), log scale")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(rows, info, ceil, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{machine_tag(info)}-{info['date']}"
    table = speedups(rows)
    (out_dir / f"{stem}.json").write_text(
        json.dumps({"machine": info, "ceilings": ceil, "rows": rows, "speedups": table}, indent=1) + "\n"
    )
    (out_dir / f"{stem}.md").write_text(markdown(info, ceil, table))
    chart(table, out_dir / f"{stem}.png", f"seer-kernels speed-ups, {stem}")
    return out_dir / f"{stem}.md"


# Seconds kept back from a time budget for the ceilings and the summary.
_SUMMARY_SECONDS = 20.0


def _run_with_budget(cmd: list[str], timeout: float | None, name: str) -> int:
    """Run `cmd`; past `timeout` seconds interrupt it like Ctrl-C, so pytest ends the
    session and pytest-benchmark still writes the cases it finished (killed only if it
    does not end within 30 s). Returns the exit code, -1 when it had to be stopped."""
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{name}: interrupted after {timeout:.0f} s; keeping the cases it finished", file=sys.stderr)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return -1


def run_benchmarks(k: str | None, time_budget: float | None) -> tuple[list[dict], list[str]]:
    """Run each bench_*.py in its own pytest, so that a file that fails or overruns loses
    only its own unfinished cases. With a time budget, each file may take an equal share of
    what is left (a file that ends early leaves its time to the next). Returns (rows,
    files that failed or were stopped)."""
    rows: list[dict] = []
    failed: list[str] = []
    paths = sorted(HERE.glob("bench_*.py"))
    deadline = None if time_budget is None else time.monotonic() + time_budget - _SUMMARY_SECONDS
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(paths):
            file_timeout = (
                None if deadline is None else max(1.0, (deadline - time.monotonic()) / (len(paths) - i))
            )
            raw = Path(tmp) / f"{path.stem}.json"
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                str(path),
                "--benchmark-only",
                f"--benchmark-json={raw}",
                "-q",
            ]
            cmd += ["-p", "no:cacheprovider"] + (["-k", k] if k else [])
            code = _run_with_budget(cmd, file_timeout, path.name)
            ok = code == 5 or (code == 0 and raw.exists())  # 5: every case deselected by -k
            try:
                rows += rows_from_pytest_json(json.loads(raw.read_text())) if raw.exists() else []
            except json.JSONDecodeError:  # a file stopped while pytest wrote its JSON
                ok = False
            if not ok:
                failed.append(path.name)
    return rows, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for the results (default: %(default)s)"
    )
    parser.add_argument("-k", default=None, help="pytest -k expression to select benchmarks")
    parser.add_argument("--no-readme", action="store_true", help="do not refresh the README section")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds the whole run may take (default: no limit)",
    )
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, failed = run_benchmarks(args.k, args.time_budget)
    if failed:
        print(f"benchmarks failed or stopped: {', '.join(failed)}", file=sys.stderr)
    if not rows:
        print("no benchmark case ran: nothing to summarize", file=sys.stderr)
        return 1
    info, ceil = machine(device), ceilings(device)
    summary = write_results(rows, info, ceil, args.out)
    print(summary.read_text())
    if not args.no_readme and args.out.resolve() == RESULTS.resolve():
        from benchmarks import readme

        readme.update()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

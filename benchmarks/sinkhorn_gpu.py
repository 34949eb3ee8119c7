"""The GPU Sinkhorn at the shapes SwAV and SEER run per GPU: every backend and path,
eager and replayed from a CUDA graph, against plain PyTorch (SwAV's loop and lightly's
`sinkhorn`, eager and compiled), with the floor and the order of the backends per size
class that the numbers imply. docs/sinkhorn-gpu.md has the predictions these check.

    python -m benchmarks.sinkhorn_gpu --out benchmarks/results   # on a GPU (gpu_check.sh runs it)

Timing (the device method): CUDA events around each call after a 256 MiB write that
evicts the L2; warm-up calls first (compiles, module loads, the one-launch path's barrier
word); median of `--rounds`. "graph" captures one call in a CUDA graph and times its
replays, which removes the host's launch work and shows the device time alone. Each
implementation's codes are checked against the float64 reference on the same scores
(max abs error) before timing. The floor is (T + 1) reads of the scores plus one write
of the codes at the copy bandwidth measured in the same run (a device-to-device copy,
bytes read plus written).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from benchmarks import run as bench_run
from benchmarks.bench_sinkhorn import cosine_scores
from benchmarks.conftest import L2_FLUSH_BYTES, event_timed

SHAPES = [(64, 3000, 3), (256, 3000, 3), (3904, 3000, 3), (32, 16000, 10), (16384, 16384, 3)]
EPSILON = 0.05


def implementations() -> dict:
    """name -> fn(scores, iterations); the plain baselines first."""
    import seer_kernels as sk
    from seer_kernels import _backend, reference
    from seer_kernels.triton import sinkhorn as launchers

    impls = {
        "swav_loop": lambda s, t: reference.swav_sinkhorn_baseline(s, EPSILON, t),
        "lightly": lambda s, t: reference.lightly_sinkhorn_baseline(s, EPSILON, t),
    }
    for name in list(impls):  # one dynamic compile serves every shape (the call's budget)
        impls[f"{name}_compiled"] = torch.compile(impls[name], dynamic=True)
    impls["default"] = lambda s, t: sk.sinkhorn(s, epsilon=EPSILON, iterations=t)
    for backend in _backend.available_backends("cuda", op="sinkhorn"):
        if backend != "reference":
            impls[backend] = lambda s, t, backend=backend: sk.sinkhorn(
                s, epsilon=EPSILON, iterations=t, backend=backend
            )
    if "triton" in impls:
        impls["triton_onchip"] = lambda s, t: launchers.onchip_pipeline(s, EPSILON, t)
        # The least certain term of docs/sinkhorn-gpu.md's model, the row passes' atomics
        # (K per row group): groups of 64 rows instead of 16, a quarter of them.
        impls["triton_rows64"] = lambda s, t: _min_group_rows(64, launchers.pipeline, s, EPSILON, t)
    return impls


def _min_group_rows(rows: int, fn, *args):
    from seer_kernels.triton import sinkhorn as launchers

    saved, launchers.MIN_GROUP_ROWS = launchers.MIN_GROUP_ROWS, rows
    try:
        return fn(*args)
    finally:
        launchers.MIN_GROUP_ROWS = saved


def _time(fn, flush: torch.Tensor, rounds: int) -> float:
    return statistics.median(event_timed(fn, flush)[1] for _ in range(rounds))


def measure(name: str, fn, scores: torch.Tensor, iterations: int, oracle, flush, rounds: int) -> dict:
    row: dict = {"impl": name}
    try:
        for _ in range(3):
            out = fn(scores, iterations)
        torch.cuda.synchronize()
        row["max_abs_err"] = float((out.double() - oracle).abs().max())
        row["eager_s"] = _time(lambda: fn(scores, iterations), flush, rounds)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn(scores, iterations)  # warm-up on the capture stream
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            fn(scores, iterations)
        row["graph_s"] = _time(graph.replay, flush, rounds)
    except Exception as exc:  # one implementation failing must not lose the others' numbers
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return row


def run(rounds: int) -> dict:
    from seer_kernels import reference
    from seer_kernels.triton import sinkhorn as launchers

    props = torch.cuda.get_device_properties(0)
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    # Bytes read plus written per second of a 1 GiB device-to-device copy.
    bandwidth = bench_run.ceilings(torch.device("cuda"))["copy_GBps"] * 1e9
    impls = implementations()
    rows = []
    for b, k, t in SHAPES:
        scores = cosine_scores(b, k)
        oracle = reference.sinkhorn(scores.double(), EPSILON, t)
        pass_bytes = (t + 1) * scores.numel() * scores.element_size() + 4 * scores.numel()
        for name, fn in impls.items():
            row = measure(name, fn, scores, t, oracle, flush, rounds)
            row.update(
                shape=[b, k], T=t, floor_s=pass_bytes / bandwidth, fits_l2=launchers.fits_on_chip(scores)
            )
            rows.append(row)
            print(_line(row), flush=True)
        del oracle
    # "device", not "machine": benchmarks/readme.py takes files with a "machine" key for
    # the README's per-machine tables of benchmarks/run.py.
    info = bench_run.machine(torch.device("cuda"))
    return {
        "device": {
            "gpu": props.name,
            "sms": props.multi_processor_count,
            "l2_bytes": props.L2_cache_size,
            **{key: info[key] for key in ("torch", "triton", "date")},
            "copy_bandwidth_Bps": bandwidth,
        },
        "rows": rows,
    }


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:.3f}"


def _line(row: dict) -> str:
    shape = "x".join(map(str, row["shape"]))
    if "error" in row:
        return f"{shape} T={row['T']} {row['impl']}: {row['error']}"
    return (
        f"{shape} T={row['T']} {row['impl']}: eager {_ms(row.get('eager_s'))} ms, graph {_ms(row.get('graph_s'))} ms, "
        f"floor {_ms(row['floor_s'])} ms, err {row.get('max_abs_err', float('nan')):.1e}"
    )


def size_class_order(rows: list[dict]) -> dict:
    """Per size class (the scores fit in L2 or not), seer_kernels' backends fastest first
    by the median over the class's shapes of each backend's graph time over the fastest
    one's: the order _registry's `order` for CUDA should hold."""
    candidates = ("cuda", "triton", "triton_onchip")
    order = {}
    for fits in (True, False):
        shapes = {tuple(r["shape"]) for r in rows if r["fits_l2"] == fits}
        ratios: dict[str, list[float]] = {c: [] for c in candidates}
        for shape in shapes:
            timed = {r["impl"]: r["graph_s"] for r in rows if tuple(r["shape"]) == shape and "graph_s" in r}
            best = min((timed[c] for c in candidates if c in timed), default=None)
            for c in candidates:
                if c in timed and best:
                    ratios[c].append(timed[c] / best)
        ranked = sorted((statistics.median(v), c) for c, v in ratios.items() if v)
        order["fits L2" if fits else "larger than L2"] = [c for _, c in ranked]
    return order


def markdown(data: dict) -> str:
    m = data["device"]
    lines = [
        f"# Sinkhorn on {m['gpu']}, {m['date']}",
        "",
        f"torch {m['torch']}, triton {m['triton']}; copy bandwidth {m['copy_bandwidth_Bps'] / 1e9:.0f} GB/s; "
        "CUDA events after an L2 flush, median; `python -m benchmarks.sinkhorn_gpu`.",
        "",
        "| (B, K, T) | impl | eager ms | graph ms | floor ms | max abs err |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in data["rows"]:
        shape = f"{r['shape'][0]}, {r['shape'][1]}, {r['T']}"
        if "error" in r:
            lines.append(f"| {shape} | {r['impl']} | {r['error']} | | | |")
            continue
        lines.append(
            f"| {shape} | {r['impl']} | {_ms(r.get('eager_s'))} | {_ms(r.get('graph_s'))} | {_ms(r['floor_s'])} | "
            f"{r.get('max_abs_err', float('nan')):.1e} |"
        )
    lines += ["", "Order per size class, by graph time (fastest first):", ""]
    for name, order in size_class_order(data["rows"]).items():
        lines.append(f"- {name}: {', '.join(order)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "benchmarks.sinkhorn_gpu: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr
        )
        return 3
    data = run(args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    device = data["device"]
    stem = args.out / f"sinkhorn-{device['gpu'].lower().replace(' ', '-')}-{device['date']}"
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    text = markdown(data)
    stem.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

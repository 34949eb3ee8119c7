"""Registers, spills and shared memory of the Triton kernels, compiled for sm_90 at the
configurations their launchers pick for the audited shapes (benchmarks/audit.py), and
the programs per SM that follow: the bound of the one-launch Sinkhorn's cooperative grid.

Each launch the audit records (kernel, compile-time constants, warps, argument types and
the integer values Triton specializes on) is compiled by Triton for sm_90 without a GPU,
and ptxas -v (the one Triton ships) reports registers, spill stores and loads; Triton's
own dynamic shared memory comes from the compiled kernel's metadata.

    python -m benchmarks.triton_resources           # writes benchmarks/results/triton-resources-sm90.{md,json}
    python -m benchmarks.triton_resources --check   # exit 1 if a kernel spills or the table is stale

Run it without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import audit
from seer_kernels._interpreter import triton_interpreted

RESULTS = Path(__file__).resolve().parent / "results"
TABLE = RESULTS / "triton-resources-sm90"
SMS = audit.SMS


# Beyond the audited shapes, one per row-tile class the launchers have: a short row
# (512-column tile) and the widest row held whole (8192-column tile).
EXTRA_SINKHORN_SHAPES = [((256, 300), 3), ((512, 6000), 3)]


def _building_blocks(normalize: bool):
    from seer_kernels.triton import sinkhorn as launchers

    def run(scores):
        log_u = torch.zeros(scores.shape[:-2] + scores.shape[-1:], device=scores.device)
        launchers.sinkhorn_colstats(scores, log_u, 0.05, normalize)
        launchers.sinkhorn_codes(scores, log_u, 0.05, normalize)

    return run


def _fused_head(iterations: int, tf32: bool):
    """A fused SwAV head step (benchmarks/audit.py) with TF32 products allowed or not, as
    the trainer (allowed) and a default torch (not) run fp32 operands."""
    import types

    def run(z, w):
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            audit.head_step(types.SimpleNamespace(section=""), z, w, iterations)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved

    return run


def cases() -> list[tuple[str, object, tuple, torch.dtype]]:
    """(name, fn, shapes, dtype) of every call whose launches are compiled."""
    out = []
    for path in ("passes", "onchip"):
        for shape, t in audit.SINKHORN_SHAPES + EXTRA_SINKHORN_SHAPES:
            name = f"sinkhorn {path} {'x'.join(map(str, shape))} T={t}"
            out.append((name, audit._sinkhorn_case(path, t), (shape,), torch.float32))
    for b, k in ((256, 3000), (512, 6000), (16384, 16384)):
        for normalize in (False, True):
            name = f"sinkhorn building blocks {b}x{k} normalize={normalize}"
            out.append((name, _building_blocks(normalize), ((b, k),), torch.float32))
    for v, b, d, k, t in audit.HEAD_SHAPES:
        for dtype, tf32, label in ((torch.float32, True, "fp32 tf32"), (torch.float32, False, "fp32"),
                                   (torch.bfloat16, False, "bf16")):  # fmt: skip
            name = f"fused head {v}x{b}x{d}x{k} T={t} {label}"
            out.append((name, _fused_head(t, tf32), ((v, b, d), (k, d)), dtype))
    return out


def _config_key(launch: audit.Launch) -> tuple:
    """What the compiled code depends on: constexprs, warps, tensor dtypes and Triton's
    integer specializations (== 1, multiple of 16)."""
    parts, consts = [], constexprs(launch)
    for name, value in sorted(launch.args.items()):
        if isinstance(value, torch.Tensor):
            parts.append((name, str(value.dtype)))
        elif isinstance(value, bool) or name in consts:
            parts.append((name, value))
        elif isinstance(value, int):
            parts.append((name, "1" if value == 1 else "16k" if value % 16 == 0 else "int"))
    return (launch.kernel, launch.num_warps, launch.num_stages, tuple(parts))


def _ptxas(ptx: str) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    tool = get_ptxas(90)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run(
            [tool.path, "-v", "--gpu-name=sm_90a", str(src), "-o", str(Path(tmp) / "k.cubin")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    log = res.stdout + res.stderr
    num = lambda pattern: int(m.group(1)) if (m := re.search(pattern, log)) else 0  # noqa: E731
    return {
        "registers": num(r"Used (\d+) registers"),
        "spill_stores": num(r"(\d+) bytes spill stores"),
        "spill_loads": num(r"(\d+) bytes spill loads"),
        "static_smem": num(r"(\d+) bytes smem"),
        "ptxas": tool.version,
    }


def _kernel(name: str):
    """The JITFunction named `name` in the Triton module of a declared op."""
    import importlib

    import triton

    from seer_kernels import _registry

    for op, spec in _registry.OPS.items():
        if "triton" in spec.backends:
            fn = getattr(importlib.import_module(f"seer_kernels.triton.{op}"), name, None)
            if isinstance(fn, triton.runtime.jit.JITFunction):
                return fn
    raise LookupError(f"no Triton kernel named {name}")


def constexprs(launch: audit.Launch) -> dict:
    fn = _kernel(launch.kernel)
    return {p.name: launch.args[p.name] for p in fn.params if p.is_constexpr and p.name in launch.args}


def compile_launch(launch: audit.Launch) -> dict:
    """Compile one recorded launch for sm_90 and read its resources."""
    from seer_kernels.triton import _common

    fn = _kernel(launch.kernel)
    # Real (tiny) CPU tensors of the recorded dtypes: compiling reads only their dtype and
    # the alignment of their data.
    args = {
        name: torch.empty(16, dtype=value.dtype) if isinstance(value, torch.Tensor) else value
        for name, value in launch.args.items()
    }
    with audit.fake_driver():
        compiled = fn.warmup(**args, grid=(1,), num_warps=launch.num_warps, num_stages=launch.num_stages)
    res = _ptxas(compiled.asm["ptx"])
    shared = int(compiled.metadata.shared) + res["static_smem"]
    per_sm = _common.programs_per_sm(res["registers"], shared, launch.num_warps)
    return {**res, "shared_bytes": shared, "programs_per_sm": per_sm, "resident_programs": per_sm * SMS}


def table() -> list[dict]:
    rows, seen = [], {}
    for name, fn, shapes, dtype in cases():
        rec = audit.audit(fn, *shapes, dtype=dtype)
        for launch in rec.launches:
            key = _config_key(launch)
            if key not in seen:
                seen[key] = compile_launch(launch)
            rows.append(
                {
                    "case": name,
                    "kernel": launch.kernel,
                    "grid": launch.grid[0][0],
                    "num_warps": launch.num_warps,
                    "num_stages": launch.num_stages,
                    "constexprs": constexprs(launch),
                    **seen[key],
                }  # fmt: skip
            )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Triton kernels on sm_90: registers, spills, shared memory",
        "",
        "Generated by `python -m benchmarks.triton_resources` (each launch of the audited calls of",
        "`benchmarks/audit.py`, compiled by Triton for sm_90 without a GPU; ptxas -v). Programs per SM",
        "follow from registers (64K per SM, allocated per warp in units of 256), warps (64 per SM) and",
        "shared memory (228 KiB per SM); times 132 SMs it bounds the one-launch path's cooperative grid.",
        "",
        "| case | kernel | constexprs | warps | stages | grid | registers | spills (st/ld B) | shared B | programs/SM |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        consts = ", ".join(f"{k}={v}" for k, v in r["constexprs"].items())
        lines.append(
            f"| {r['case']} | {r['kernel']} | {consts} | {r['num_warps']} | {r['num_stages']} | {r['grid']} | {r['registers']} | "
            f"{r['spill_stores']}/{r['spill_loads']} | {r['shared_bytes']} | {r['programs_per_sm']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail on spills or a stale committed table")
    args = parser.parse_args(argv)
    if triton_interpreted():
        print("benchmarks.triton_resources: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    rows = table()
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    if args.check:
        committed = (
            json.loads(TABLE.with_suffix(".json").read_text())
            if TABLE.with_suffix(".json").exists()
            else None
        )
        stale = committed != json.loads(json.dumps(rows))
        for r in spills:
            print(
                f"spills: {r['case']} {r['kernel']} {r['constexprs']}: {r['spill_stores']}/{r['spill_loads']} B"
            )
        if stale:
            print(f"{TABLE.with_suffix('.json')} is stale: run python -m benchmarks.triton_resources")
        return 1 if spills or stale else 0
    RESULTS.mkdir(exist_ok=True)
    TABLE.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    TABLE.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())

"""What the Triton Sinkhorn costs on a GPU, counted without one (benchmarks/audit.py):
GPU kernels, allocations, fills and host syncs per call on fake CUDA tensors at the
per-GPU shapes SwAV and SEER run, and torch.compile(fullgraph=True) giving one graph.

At these sizes (a few MB of scores per GPU) a call's time is launches, host work and
serial steps: T + 1 launches for T iterations (pass 0, T - 1 row passes, the codes), one
launch on the one-launch path, the codes and one workspace allocated, nothing filled and
nothing read back to the host. The audit runs in a subprocess without TRITON_INTERPRET
(tests/conftest.py sets it for the CPU suite; the interpreter would run the kernels).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.audit", "--json"],
        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return json.loads(res.stdout)


def test_every_issue_shape_is_audited(report):
    shapes = {(row["path"], tuple(row["shape"]), row["T"]) for row in report["sinkhorn"]}
    for path in ("passes", "onchip"):
        for shape, t in [((64, 3000), 3), ((256, 3000), 3), ((3904, 3000), 3), ((32, 16000), 10),
                         ((16384, 16384), 3), ((2, 256, 3000), 3)]:  # fmt: skip
            assert (path, shape, t) in shapes


def test_one_launch_per_pass(report):
    for row in report["sinkhorn"]:
        what = f"{row['path']} {row['shape']} T={row['T']}: {row['launches']}"
        budget = 1 if row["path"] == "onchip" else row["T"] + 1
        assert row["kernels"] <= budget, what
        assert row["triton_launches"] == budget, what


def test_two_allocations_no_fill_no_sync(report):
    for row in report["sinkhorn"]:
        what = f"{row['path']} {row['shape']} T={row['T']}"
        assert row["allocations"] <= 2, what  # the codes and one workspace
        assert row["fills"] == 0, what
        assert row["syncs"] == 0, what


def test_compile_gives_one_graph(report):
    assert report["compile"]["sinkhorn"]["graphs"] == 1
    # Scores, codes of two crops, the loss, forward and backward.
    assert report["compile"]["swav_head"]["graphs"] == 1

"""What the Triton Sinkhorn and the fused SwAV head cost on a GPU, counted without one
(benchmarks/audit.py): GPU kernels, allocations, fills and host syncs per call on fake
CUDA tensors at the per-GPU shapes SwAV and SEER run, and torch.compile(fullgraph=True)
giving one graph.

At these sizes (a few MB of scores per GPU) a call's time is launches, host work and
serial steps. The Sinkhorn: T + 1 launches for T iterations (pass 0, T - 1 row passes,
the codes), one launch on the one-launch path, the codes and one workspace allocated,
nothing filled and nothing read back to the host. The fused head step (the assignment
crops' scores under no_grad, one Sinkhorn call for A = 2 crops, prototype_cross_entropy's
forward and backward): 6 kernels besides the Sinkhorn's 4 at T = 3 (the composed head on
the three other ops made 29), and no allocation of the V B K elements of all crops'
scores. The audit runs in a subprocess without TRITON_INTERPRET (tests/conftest.py sets it
for the CPU suite; the interpreter would run the kernels).
"""

from __future__ import annotations

import json
import math

import pytest
from processes import run_uninterpreted

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads(run_uninterpreted("-m", "benchmarks.audit", "--json", timeout=900).stdout)


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
    assert report["compile"]["composed_head"]["graphs"] == 1
    # The fused head step (swav_prototype_loss): CPU tensors with the cpu backend (forward
    # and backward run), fake CUDA tensors with the Triton backend (forward), and its
    # forward + backward trace with the Triton backend.
    graphs = report["compile"]["fused_head"]
    assert graphs["cpu"]["graphs"] == 1 and graphs["cpu"]["backward_ran"]
    assert graphs["cuda"]["graphs"] == 1
    assert graphs["cuda_joint"]["graphs"] == 1


# ------------------------------------------------------------------ the fused SwAV head

HEAD_SHAPES = [
    (8, 64, 128, 3000, 3),
    (8, 256, 128, 3000, 3),
    (6, 32, 256, 16000, 10),
    (10, 256, 256, 65536, 3),
]


def _head_rows(report: dict, shapes) -> list[dict]:
    rows = {tuple(row["shape"]): row for row in report["fused_head"]}
    assert set(shapes) <= set(rows), f"not audited: {set(shapes) - set(rows)}"
    return [rows[s] for s in shapes]


def test_the_head_without_the_sinkhorn_is_at_most_8_kernels(report):
    for row in _head_rows(report, HEAD_SHAPES):
        what = f"{row['shape']}: {row['kernel_names']}"
        assert row["head_kernels"] <= 8, what
        # The fused loss is two launches and its backward one (plus autograd's fill).
        assert row["kernels"]["loss"] == 2 and row["kernels"]["backward"] == 2, what


def test_the_head_step_is_at_most_12_kernels(report):
    # The Sinkhorn of both assignment crops is T + 1 launches: 4 at the counted T = 3.
    for row in _head_rows(report, HEAD_SHAPES[:2]):
        assert row["kernels"]["sinkhorn"] == 4, row["kernel_names"]
        assert row["total_kernels"] <= 12, f"{row['shape']}: {row['kernel_names']}"


def test_no_allocation_the_size_of_all_crops_scores(report):
    """No allocation of V B K elements or more, except the (K, D) prototype gradient,
    which is larger than V B K where D > V B (SEER's (6, 32, 256, 16000): 4.1 M against
    3.1 M elements); the composed head's scores and their gradient are V B K each."""
    for row in _head_rows(report, HEAD_SHAPES):
        v, b, d, k, _ = row["shape"]
        assert row["vbk"] == v * b * k
        for section, op, shape in row["large_allocations"]:
            assert tuple(shape) == (k, d) and section in ("loss", "backward"), (
                f"{row['shape']}: {section} {op} {shape}"
            )
        assert math.prod(row["largest_allocation"][2]) < v * b * k or d > v * b


def test_the_head_step_does_not_sync(report):
    for row in _head_rows(report, HEAD_SHAPES):
        assert row["syncs"] == [], row["shape"]

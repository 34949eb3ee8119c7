"""The benchmark tooling: summaries from pytest-benchmark JSON, and the GPU check
script's GPU-less behaviour (argument parsing, a clean failure without a GPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import readme, run

ROOT = Path(__file__).resolve().parent.parent


def _bench(group, backend, median, baseline=False, nbytes=None, plain=None):
    return {
        "group": group,
        "name": f"test[{backend}]",
        "stats": {"median": median},
        "extra_info": {
            "op": "sinkhorn",
            "backend": backend,
            "baseline": baseline,
            "bytes": nbytes,
            "plain": plain,
        },
    }


def test_speedups_against_every_baseline():
    data = {
        "benchmarks": [
            _bench("g", "reference", 4.0, baseline=True),
            _bench("g", "reference+compile", 2.0, baseline=True),
            _bench("g", "cpu", 1.0, nbytes=2e9),
        ]
    }
    rows = run.rows_from_pytest_json(data)
    assert rows[2]["GBps"] == pytest.approx(2.0)
    (entry,) = run.speedups(rows)
    assert entry["backend"] == "cpu"
    assert entry["vs"] == {"reference": pytest.approx(4.0), "reference+compile": pytest.approx(2.0)}


def test_speedups_against_the_fastest_plain_baseline(tmp_path):
    """Two plain spellings of each kind (SwAV's loop, lightly's): the summary names the
    faster of each kind, per group, and the markdown shows it beside the full list."""
    data = {
        "benchmarks": [
            _bench("g", "swav_baseline", 6.0, baseline=True, plain="eager"),
            _bench("g", "lightly_baseline", 4.0, baseline=True, plain="eager"),
            _bench("g", "swav_baseline_compiled", 2.0, baseline=True, plain="compiled"),
            _bench("g", "lightly_baseline_compiled", 3.0, baseline=True, plain="compiled"),
            _bench("g", "reference", 8.0, baseline=True),
            _bench("g", "cpu", 1.0),
            _bench("h", "reference", 3.0, baseline=True),
            _bench("h", "cpu", 1.0),
        ]
    }
    table = run.speedups(run.rows_from_pytest_json(data))
    (g, h) = table
    assert g["vs_plain"] == {
        "eager": {"baseline": "lightly_baseline", "speedup": pytest.approx(4.0)},
        "compiled": {"baseline": "swav_baseline_compiled", "speedup": pytest.approx(2.0)},
    }
    assert "vs_plain" not in h  # no plain baseline in that group
    info = {"date": "2026-01-01", "torch": "x", "triton": "y", "cpu": "z", "cores": 2, "device": "cpu"}
    ceil = {"copy_GBps": 10.0, "matmul_TFLOPs": 0.1, "matmul_dtype": "float32"}
    text = run.write_results(run.rows_from_pytest_json(data), info, ceil, tmp_path).read_text()
    assert "**4.00x** lightly_baseline, **2.00x** swav_baseline_compiled" in text
    assert "| vs fastest plain |" in text and "8.00x reference" in text


def test_results_files_and_readme_section(tmp_path, monkeypatch):
    rows = run.rows_from_pytest_json(
        {"benchmarks": [_bench("g", "reference", 3.0, baseline=True), _bench("g", "cpu", 1.0)]}
    )
    info = {"date": "2026-01-01", "torch": "x", "triton": "y", "cpu": "z", "cores": 2, "device": "cpu"}
    ceil = {"copy_GBps": 10.0, "matmul_TFLOPs": 0.1, "matmul_dtype": "float32"}
    md = run.write_results(rows, info, ceil, tmp_path)
    assert "3.00x reference" in md.read_text()
    assert (tmp_path / "cpu2-2026-01-01.png").exists()
    assert (tmp_path / "cpu2-2026-01-01.json").exists()
    monkeypatch.setattr(readme, "RESULTS", tmp_path)
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    target = tmp_path / "README.md"
    target.write_text("# x\n")
    readme.update(target)
    readme.update(target)  # idempotent: one section
    text = target.read_text()
    assert text.count(readme.START) == 1 and "3.00x reference" in text


def test_ceilings_are_measured():
    ceil = run.ceilings(torch.device("cpu"))
    assert ceil["copy_GBps"] > 0.1 and ceil["matmul_TFLOPs"] > 0


def test_gpu_check_usage_and_clean_failure_without_gpu(tmp_path):
    script = ROOT / "benchmarks" / "gpu_check.sh"
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the script would run for real")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    # The audit needs no GPU: it runs, then the script stops before the stages that do. (The
    # resource stage, also GPU-free, is tests/test_triton_compile.py's check, not rerun here.)
    res = subprocess.run(
        ["bash", str(script), str(tmp_path / "out"), "audit,tests,bench"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert res.returncode == 3, res.stderr
    assert "no CUDA GPU visible" in res.stderr and "stopping here" in res.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "audit: exit 0" in summary and "resources" not in summary, summary


def test_sinkhorn_gpu_report_without_a_gpu(capsys):
    """benchmarks/sinkhorn_gpu.py says it needs a GPU; its table and the order per size
    class it prints come from the rows alone."""
    from benchmarks import sinkhorn_gpu

    if not torch.cuda.is_available():
        assert sinkhorn_gpu.main([]) == 3
        assert "needs a CUDA GPU" in capsys.readouterr().err
    rows = []
    for shape, fits, times in [((256, 3000), True, {"cuda": 2.0, "triton": 1.0, "triton_onchip": 0.5}),
                               ((3904, 3000), True, {"cuda": 3.0, "triton": 2.0, "triton_onchip": 1.0}),
                               ((16384, 16384), False, {"cuda": 5.0, "triton": 2.5, "triton_onchip": 3.0})]:  # fmt: skip
        for impl, t in times.items():
            rows.append({"impl": impl, "shape": list(shape), "T": 3, "graph_s": t, "eager_s": t, "floor_s": 0.1,
                         "fits_l2": fits, "max_abs_err": 1e-7})  # fmt: skip
    rows.append(
        {"impl": "cuda", "shape": [64, 3000], "T": 3, "floor_s": 0.1, "fits_l2": True, "error": "X: y"}
    )
    order = sinkhorn_gpu.size_class_order(rows)
    assert order == {
        "fits L2": ["triton_onchip", "triton", "cuda"],
        "larger than L2": ["triton", "triton_onchip", "cuda"],
    }
    device = {"gpu": "G", "date": "d", "torch": "t", "triton": "3", "copy_bandwidth_Bps": 1e12}
    text = sinkhorn_gpu.markdown({"device": device, "rows": rows})
    assert "| 16384, 16384, 3 | triton | 2500.000 |" in text and "X: y" in text

"""seer-eval end to end on a tiny checkpoint written by the trainer, and its bad-input errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seer.eval import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# A small protocol: the machinery is the same as the default's, the run takes seconds.
QUICK = ["--fractions", "0.1", "1", "--draws", "2", "--weight-decays", "1e-3", "1e-1", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two SwAV steps of the default digits config through the trainer's own entry point."""
    from seer.train import main as train_main

    run = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        # The reference ops: this test is about the evaluation, not about which kernels trained.
        patch.setenv("SEER_KERNELS_BACKEND", "reference")
        threads = torch.get_num_threads()
        rc = train_main(
            [f"run_dir={run}", "train.max_steps=2", "train.batch_size=32", "train.progress=false"]
        )
        torch.set_num_threads(threads)
    assert rc == 0
    assert (run / "backbone.pt").is_file() and list((run / "checkpoints").glob("step_*.pt"))
    return run


def test_end_to_end_on_the_trainers_checkpoint(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([str(run_dir), *QUICK, "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    assert "| features | dim | 10% (126 labels) | 100% (1258 labels) | k-NN (k=20) |" in stdout
    record = json.loads((tmp_path / "eval.json").read_text())
    names = [r["name"] for r in record["results"]]
    assert names == ["SwAV trunk", "random init", "random init, BN re-estimated", "raw pixels"]
    assert [r["baseline"] for r in record["results"]] == [False, True, True, True]
    assert record["source"].endswith(".pt") and record["arch"] == "regnetx_002"
    assert record["data"]["train"] == 1258 and record["protocol"]["draws"] == 2
    acc = {r["name"]: r["probe"]["100%"]["mean"] for r in record["results"]}
    assert acc["raw pixels"] > 90  # pixels of digits are linearly separable to ~96%
    # The point of the second random baseline: BN statistics of N(0, 1) do not fit the data.
    assert acc["random init, BN re-estimated"] > acc["random init"]
    for r in record["results"]:
        assert len(r["probe"]["10%"]["accuracies"]) == 2 and 10 <= r["knn"] <= 100
    assert (tmp_path / "eval.png").stat().st_size > 10_000
    assert (tmp_path / "eval.md").read_text() in stdout


def test_progress_names_the_swav_trunk_as_the_table_does_and_bars_only_on_a_terminal(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--fractions", "1", "--weight-decays", "1e-3", "--baselines", "pixels", "--out", str(tmp_path)]
    assert main([str(run_dir), *args]) == 0
    out, err = capsys.readouterr()
    assert "SwAV trunk: dim 368" in err
    assert "| SwAV trunk " in out and "SSL trunk" not in err + out
    # Sent to a file (not a terminal), the log has the per-set lines and no bars: tqdm's
    # carriage returns would make it one endless line.
    assert "\r" not in err and "train features" not in err
    # On a terminal, the bars name the trunk as the table does.
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([str(run_dir), *args]) == 0
    assert "SwAV trunk: train features" in terminal.getvalue() and "SSL trunk" not in terminal.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_exported_backbone_of_another_architecture_is_refused(
    run_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([str(run_dir / "backbone.pt"), "--arch", "regnety_320", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "seer-eval: error:" in err and "'regnetx_002'" in err and "'regnety_320'" in err


def test_state_dict_of_another_network_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import timm

    other = tmp_path / "resnet.pt"
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), other)
    assert main([str(other), "--arch", "regnetx_002", *QUICK]) == 2
    assert "do not match the architecture" in capsys.readouterr().err


def test_fraction_that_starves_a_class_fails_before_any_feature(
    run_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([str(run_dir), "--fractions", "0.001", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no labelled example" in err and "a fraction of at least" in err


def write_folder(root: Path, classes: list[str], per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (40, 40, 3)) + 150 * c  # bright class vs dark class
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_folder_with_one_class_is_refused(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = write_folder(tmp_path / "cats", ["cat"], 4)
    assert main([str(run_dir), "--data", str(folder), *QUICK]) == 2
    assert "one class folder ('cat')" in capsys.readouterr().err


def test_labelled_folder_end_to_end(run_dir: Path, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "set", ["dark", "light"], 6)
    out = tmp_path / "out"
    args = ["--data", str(folder), "--test-fraction", "0.34", "--fractions", "1", "--baselines", "pixels"]
    assert main([str(run_dir / "backbone.pt"), *args, "--no-progress", "--out", str(out)]) == 0
    record = json.loads((out / "eval.json").read_text())
    assert [r["name"] for r in record["results"]] == ["SwAV trunk", "raw pixels"]
    assert record["data"]["class_names"] == ["dark", "light"] and record["data"]["test"] == 4
    assert record["results"][1]["probe"]["100%"]["mean"] == 100.0  # brightness separates them


def test_usage_errors(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(run_dir / "missing.pt")]) == 2
    assert "no checkpoint, backbone file or run folder" in capsys.readouterr().err
    assert main([str(run_dir), "--train-list", "x.txt"]) == 2
    assert "--train-list and --test-list go together" in capsys.readouterr().err
    assert main([str(run_dir), "--fractions", "1.5"]) == 2
    assert "--fractions must lie in (0, 1]" in capsys.readouterr().err


def test_python_dash_m_entry_point() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-m", "seer.eval", "--help"], capture_output=True, text=True, env=env, check=True
    )
    assert "usage: seer-eval" in out.stdout and "--fractions" in out.stdout

"""Trainings end cleanly: when `train` returns, its process group and the group's gloo
threads are gone (DDP, DDP with ZeRO, FSDP2), and two-rank torchrun trainings exit 0 on
every rank with no C++ `terminate called` in any stderr, run after run.

A group that outlives `destroy_process_group` keeps its worker and transport threads until
interpreter exit, where a rank that finished its work can abort (SIGABRT): an intermittent
failure no single run shows reliably, hence the thread check (deterministic) and the
repeated runs (the symptom itself). `make test` runs the loop a few times per mode;
`make test-slow` runs it 50 times per mode."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SMALL = ["train.batch_size=16", "train.progress=false", "train.threads=1", "train.log_every=1"]

MODES = {
    "ddp": ["distributed=ddp"],
    "zero": ["distributed=ddp", "optimizer.name=lars", "optimizer.sharded=true"],
    "fsdp": ["distributed=fsdp"],
}

# Thread names the gloo backend and its TCP store give their threads (Linux `comm`).
GROUP_THREADS = ("gloo", "tcpstore")

THREADS_AFTER_TRAIN = textwrap.dedent(
    """
    import gc, os, sys
    from seer.config import load_config
    from seer.train import train

    train(load_config(None, sys.argv[1:]))
    gc.collect()
    tasks = os.listdir("/proc/self/task")
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
    print(sorted(n for n in names if any(k in n for k in KEYS)))
    """
).replace("KEYS", repr(GROUP_THREADS))


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
@pytest.mark.parametrize("mode", MODES)
def test_train_returns_with_the_process_group_threads_gone(tmp_path, mode):
    # A fresh interpreter, so no other test's groups or caches are in it. One process:
    # setup() makes a one-rank gloo group, the same code path as a real run.
    overrides = [f"run_dir={tmp_path}", *SMALL, "train.max_steps=2", "train.export_backbone=false"]
    proc = subprocess.run(
        [sys.executable, "-c", THREADS_AFTER_TRAIN, *overrides, *MODES[mode]],
        env=_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    left = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert left == [], f"{mode}: threads of a destroyed process group still run: {left}"


def _torchrun_train(run_dir: Path, mode: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "seer.train", f"run_dir={run_dir}", *SMALL, "train.max_steps=3",
        "train.export_backbone=false", "train.dist_timeout_s=120", *MODES[mode],
    ]  # fmt: skip
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "runs", [pytest.param(2, id="ci"), pytest.param(50, id="soak", marks=pytest.mark.slow)]
)
def test_two_rank_trainings_exit_cleanly_every_time(tmp_path, mode, runs):
    for i in range(runs):
        proc = _torchrun_train(tmp_path / f"run{i}", mode)
        # torchrun exits 0 only when every rank did.
        where = f"{mode}, run {i + 1} of {runs}"
        assert proc.returncode == 0, f"{where}: exit {proc.returncode}\n{proc.stderr[-4000:]}"
        assert "terminate called" not in proc.stderr, f"{where}: a rank aborted\n{proc.stderr[-4000:]}"
        assert "final loss" in proc.stdout, f"{where}: no summary\n{proc.stdout[-2000:]}"

"""Crash safety and distributed faults, with real training processes on the CPU.

Crash safety: `python -m seer.train` processes are SIGKILLed at seeded random points, one
of them frozen (SIGSTOP) while a checkpoint's temporary file is half written and killed
there; after every kill each checkpoint the loader lists loads, and restarts with
resume=auto end with the parameters of an uninterrupted run.

Distributed faults: two gloo ranks started by hand, so that no launcher kills the
survivor for us; one rank raises, is SIGKILLed or stalls, and the survivor must exit with
an error naming its rank and step, in seconds (or at train.dist_timeout_s for a stall),
never hang. torchrun --max-restarts 1 with a rank killed once resumes from the last
checkpoint and finishes.

Every wait has a deadline, every subprocess is killed at the end of its test, and every
test carries a pytest-timeout, so a failure cannot hang CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from seer import checkpoint as ckpt_io
from seer.config import load_config
from seer.monitor import read_metrics
from seer.train import train

ROOT = Path(__file__).resolve().parent.parent

# The smallest trainer config of tests/test_train.py, bitwise deterministic on the CPU
# (also on a machine with a GPU: these are gloo tests).
TINY = [
    "device=cpu",
    "train.batch_size=16",
    "train.progress=false",
    "train.threads=1",
    "train.log_every=1",
    "train.deterministic=true",
    "train.export_backbone=false",
]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; whatever still runs at its end is killed, workers first
    (torchrun starts its workers in sessions of their own)."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            for child in _children(proc.pid):
                _kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=30)


def _start(procs: list, cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:  # appended to across restarts
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    procs.append(proc)
    return proc


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.kill(pid, sig)


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait_until(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def _newest_step(run: Path) -> int:
    paths = ckpt_io.list_checkpoints(run)
    return int(paths[-1].stem.split("_")[1]) if paths else -1


def _temporaries(run: Path) -> list[Path]:
    folder = ckpt_io.checkpoint_dir(run)
    return sorted(folder.glob(".step_*.tmp*")) if folder.is_dir() else []


def _assert_listed_checkpoints_load(run: Path) -> None:
    """What resume=auto could pick is complete: every listed file loads, no fallback."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # latest_checkpoint warns when it falls back
        for path in ckpt_io.list_checkpoints(run):
            assert ckpt_io.load_checkpoint(path)["step"] == int(path.stem.split("_")[1]), path
        found = ckpt_io.latest_checkpoint(run)
    assert (found is None) == (not ckpt_io.list_checkpoints(run))


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert (a["step"], a["epoch"], a["batch"]) == (b["step"], b["epoch"], b["batch"])
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, atol=1e-6, rtol=0, msg=key)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for name, state in a["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(b["optimizer"]["state"][name][key], state[key], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------ crash safety


def _kill_mid_checkpoint(proc: subprocess.Popen, run: Path, timeout: float) -> Path | None:
    """Freeze the process while a checkpoint's temporary file is shorter than a complete
    checkpoint and SIGKILL it there; the half-written file it leaves (None if the run
    ended first). A temporary seen too late (already complete) is let go, and the next
    save is tried."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no checkpoint write caught in {timeout:.0f} s")
        complete = ckpt_io.list_checkpoints(run)
        tmps = _temporaries(run)
        if not (complete and tmps):  # no size to compare with yet, or no write under way
            time.sleep(0.001)
            continue
        _kill(proc.pid, signal.SIGSTOP)
        _wait_until(lambda: _state(proc.pid) in ("T", None), 10, "the process to stop", 0.001)
        full = complete[-1].stat().st_size
        partial = [t for t in _temporaries(run) if t.stat().st_size < full]
        if partial:
            proc.kill()
            proc.wait(timeout=30)
            return partial[0]
        _kill(proc.pid, signal.SIGCONT)
        _wait_until(lambda: not _temporaries(run) or proc.poll() is not None, 30, "the save to end", 0.001)
    return None


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _kill_later(proc: subprocess.Popen, run: Path, delay: float, after_step: int) -> None:
    """SIGKILL `delay` s after the newest checkpoint reaches `after_step` (-1: after the start)."""
    _wait_until(lambda: _newest_step(run) >= after_step or proc.poll() is not None, 120, "checkpoints")
    time.sleep(delay)
    proc.kill()
    proc.wait(timeout=30)


def _kill_plan(rng: random.Random, kills: int, mid_write: int) -> list[tuple[str, float, int]]:
    """(kind, delay s, checkpoints to wait for): `mid_write` kills inside a checkpoint
    write; the others either at a random moment after start (imports, model build,
    resume) or a random moment after 1-3 new checkpoints (a step, a save, the pruning)."""
    plan = [("checkpoint", 0.0, 0)] * mid_write
    for i in range(kills - mid_write):
        if i % 2 == 0:
            plan.append(("training", rng.uniform(0.0, 0.4), rng.randint(1, 3)))
        else:
            plan.append(("startup", rng.uniform(0.5, 6.0), 0))
    rng.shuffle(plan)
    return plan


def _crash_and_resume(tmp_path: Path, procs: list, seed: int, kills: int, mid_write: int, steps: int):
    overrides = [*TINY, f"train.max_steps={steps}", "train.checkpoint_every=1", "train.keep_last=2"]
    straight, run, log = tmp_path / "straight", tmp_path / "crashed", tmp_path / "crashed.log"
    train(load_config(None, [f"run_dir={straight}", *overrides]))
    cmd = [sys.executable, "-m", "seer.train", f"run_dir={run}", *overrides]  # resume=auto
    history, half_written = [], []
    for kind, delay, new_checkpoints in _kill_plan(random.Random(seed), kills, mid_write):
        before = _newest_step(run)
        proc = _start(procs, cmd, log, _env())
        if kind == "checkpoint":
            tmp = _kill_mid_checkpoint(proc, run, timeout=120)
            if tmp is not None:
                half_written.append(tmp)
                # The half-written file is really incomplete, and the loader ignores it.
                with pytest.raises(Exception):
                    torch.load(tmp, map_location="cpu", weights_only=True)
                assert tmp not in ckpt_io.list_checkpoints(run)
        else:
            _kill_later(proc, run, delay, before + new_checkpoints if kind == "training" else -1)
        history.append((kind, before, _newest_step(run), proc.returncode))
        _assert_listed_checkpoints_load(run)
        if proc.returncode == 0:  # the run finished before this kill
            break
    assert len(half_written) == mid_write, f"mid-checkpoint kills: {half_written}; history {history}"
    proc = _start(procs, cmd, log, _env())
    assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    history.append(("final", -1, _newest_step(run), proc.returncode))
    _assert_listed_checkpoints_load(run)
    assert not _temporaries(run), "temporary checkpoint files left behind"
    assert json.loads((run / "summary.json").read_text())["step"] == steps
    _assert_same_training_state(
        ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(straight, steps)),
        ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(run, steps)),
    )
    # The metrics of all sessions form the uninterrupted run's curve.
    torch.testing.assert_close(
        torch.tensor([r["loss"] for r in read_metrics(run / "metrics.jsonl")]),
        torch.tensor([r["loss"] for r in read_metrics(straight / "metrics.jsonl")]),
        atol=1e-5,
        rtol=0,
    )
    return history


@pytest.mark.timeout(420)
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path, procs):
    history = _crash_and_resume(tmp_path, procs, seed=0, kills=3, mid_write=1, steps=12)
    print("kills (kind, newest checkpoint before, after, exit code):", history)
    assert [h[0] for h in history].count("checkpoint") == 1


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_sigkill_soak_many_kills_then_resume_equals_uninterrupted(tmp_path, procs):
    history = _crash_and_resume(tmp_path, procs, seed=1, kills=20, mid_write=5, steps=80)
    print("kills (kind, newest checkpoint before, after, exit code):", history)
    assert len(history) == 21, history  # no session finished before its kill


# ------------------------------------------------------------------------ two gloo ranks

# Test-only fault: `rank` raises when it is about to run step `at`; then the real CLI.
RAISER = textwrap.dedent(
    """
    import os, sys
    from seer import train as T

    rank, at = sys.argv[1], int(sys.argv[2])
    original = T.Trainer.train_step

    def train_step(self, *args, **kwargs):
        if os.environ["RANK"] == rank and self.step == at:
            raise RuntimeError(f"injected fault at step {self.step}")
        return original(self, *args, **kwargs)

    T.Trainer.train_step = train_step
    sys.exit(T.main(sys.argv[3:]))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_pair(tmp_path: Path, procs: list, entry: list[str], timeout_s: int) -> list[subprocess.Popen]:
    """Two ranks as a cluster scheduler starts them: env:// rendezvous, no launcher."""
    port = str(_free_port())
    overrides = [f"run_dir={tmp_path / 'run'}", *TINY, "train.max_steps=60", "train.checkpoint_every=2"]
    pair = []
    for rank in (0, 1):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        cmd = [sys.executable, *entry, *overrides, f"train.dist_timeout_s={timeout_s}"]
        pair.append(_start(procs, cmd, tmp_path / f"rank{rank}.log", env))
    return pair


def _exit_times(pair: list[subprocess.Popen], timeout: float) -> list[float]:
    """monotonic time at which each process was seen to exit (polled every 10 ms)."""
    ended: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(ended) < len(pair):
        if time.monotonic() > deadline:
            raise TimeoutError(f"ranks {[i for i in range(len(pair)) if i not in ended]} still running")
        for i, proc in enumerate(pair):
            if i not in ended and proc.poll() is not None:
                ended[i] = time.monotonic()
        time.sleep(0.01)
    return [ended[i] for i in range(len(pair))]


def _assert_clear_error(log: Path, rank: int, cause: str) -> int:
    """The survivor's log names its rank and step and the cause; returns the step."""
    text = log.read_text()
    found = re.search(rf"seer-train: rank {rank} of 2 failed at step (\d+) of 60 \(epoch 0\): (.*)", text)
    assert found, text[-3000:]
    assert re.search(cause, found.group(2)), found.group(0)
    assert "rerun with resume=auto" in text
    return int(found.group(1))


@pytest.mark.timeout(180)
def test_rank_raising_makes_the_other_exit_fast_with_a_clear_error(tmp_path, procs):
    script = tmp_path / "raiser.py"
    script.write_text(RAISER)
    pair = _start_pair(tmp_path, procs, [str(script), "1", "3"], timeout_s=20)
    exits = _exit_times(pair, timeout=150)
    assert pair[1].returncode != 0 and pair[0].returncode != 0
    assert _assert_clear_error(tmp_path / "rank1.log", 1, "injected fault at step 3") == 3
    _assert_clear_error(tmp_path / "rank0.log", 0, "Connection (closed|reset) by peer")
    survivor_s = exits[0] - exits[1]
    print(f"survivor exited {survivor_s:.2f} s after the failing rank")
    assert survivor_s < 10, survivor_s  # the peer's closed connection, far from the 20 s timeout


@pytest.mark.parametrize("victim", [0, 1], ids=["rank0-and-its-store", "rank1"])
@pytest.mark.timeout(180)
def test_rank_sigkilled_makes_the_other_exit_fast_with_a_clear_error(tmp_path, procs, victim):
    pair = _start_pair(tmp_path, procs, ["-m", "seer.train"], timeout_s=20)
    run = tmp_path / "run"
    _wait_until(lambda: _newest_step(run) >= 2 or pair[0].poll() is not None, 150, "a checkpoint")
    killed = time.monotonic()
    pair[victim].kill()
    exits = _exit_times(pair, timeout=120)
    survivor = 1 - victim
    assert pair[victim].returncode == -signal.SIGKILL and pair[survivor].returncode != 0
    _assert_clear_error(tmp_path / f"rank{survivor}.log", survivor, "Connection (closed|reset) by peer")
    survivor_s = exits[survivor] - killed
    print(f"survivor exited {survivor_s:.2f} s after the SIGKILL")
    assert survivor_s < 10, survivor_s
    _assert_listed_checkpoints_load(run)


@pytest.mark.timeout(180)
def test_rank_stalled_makes_the_other_exit_at_the_timeout(tmp_path, procs):
    """A rank that stops answering (SIGSTOP: sockets open, nothing sent) is what only the
    timeout catches: the survivor fails after about train.dist_timeout_s."""
    pair = _start_pair(tmp_path, procs, ["-m", "seer.train"], timeout_s=10)
    _wait_until(
        lambda: _newest_step(tmp_path / "run") >= 2 or pair[0].poll() is not None, 150, "a checkpoint"
    )
    stalled = time.monotonic()
    pair[1].send_signal(signal.SIGSTOP)
    (exit_0,) = _exit_times(pair[:1], timeout=90)
    pair[1].kill()  # a stopped process still dies of SIGKILL
    _assert_clear_error(tmp_path / "rank0.log", 0, "[Tt]imeout|[Tt]imed out")
    survivor_s = exit_0 - stalled
    print(f"survivor exited {survivor_s:.2f} s after the stall (timeout 10 s)")
    assert 5 < survivor_s < 40, survivor_s


# ------------------------------------------------------------------------ torchrun restart


@pytest.mark.timeout(300)
def test_torchrun_max_restarts_resumes_after_a_rank_dies(tmp_path, procs):
    run, log, steps = tmp_path / "run", tmp_path / "torchrun.log", 8
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "--max-restarts", "1", "-m", "seer.train", f"run_dir={run}", *TINY,
        f"train.max_steps={steps}", "train.checkpoint_every=2", "train.dist_timeout_s=20",
    ]  # fmt: skip
    agent = _start(procs, cmd, log, _env())
    _wait_until(lambda: _newest_step(run) >= 2 or agent.poll() is not None, 150, "a checkpoint")
    at_kill = _newest_step(run)
    rank1 = [p for p in _children(agent.pid) if b"RANK=1\0" in Path(f"/proc/{p}/environ").read_bytes()]
    assert len(rank1) == 1, rank1
    _kill(rank1[0], signal.SIGKILL)
    assert agent.wait(timeout=240) == 0, log.read_text()[-4000:]
    text = log.read_text()
    resumed = re.findall(r"resumed from \S+step_(\d+)\.pt: step (\d+)", text)
    assert len(resumed) == 1, text[-4000:]
    step = int(resumed[0][1])
    # The newest checkpoint when the rank died, or the one rank 0 was writing then.
    assert step in (at_kill, at_kill + 2), (step, at_kill)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == steps and summary["steps_run"] == steps - step
    assert _newest_step(run) == steps
    _assert_listed_checkpoints_load(run)

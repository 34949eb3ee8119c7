"""Tests that run in a fresh process: under one of ATen's CPU capabilities, or without
the Triton interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])


def _env(**extra: str) -> dict:
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def run_with_capability(script: str, capability: str, timeout: float = 120) -> list[str]:
    """Run `script` with ATEN_CPU_CAPABILITY=capability (read once per process, so the
    DEFAULT and AVX2 kernel tables are tested in a fresh one). The script prints the
    capability it ran with first, then what the test checks: those words are returned."""
    env = _env(ATEN_CPU_CAPABILITY=capability)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.split()
    assert out and out[0].lower() == capability, f"ATEN_CPU_CAPABILITY={capability} not applied: {out}"
    return out[1:]


def run_uninterpreted(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """`python *args` from the repository root without TRITON_INTERPRET (kernels compiled,
    not run: the launch audit and the sm_90 compiles); fails on a non-zero exit."""
    env = _env()
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    return res

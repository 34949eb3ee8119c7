"""The op declaration (seer_kernels/_registry.py) against what exists: every declared op
has a reference, a public wrapper, fake kernels, a test grid, a benchmark and a demo case,
and every backend it declares has its kernels registered (and no registered kernel goes
undeclared); backend resolution never picks a backend the op lacks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch._library import simple_registry

import seer_kernels as sk
from seer_kernels import _backend, _registry, demo, reference

ROOT = Path(__file__).resolve().parent.parent
OPS = list(_registry.OPS)


def _has_fake(qualname: str) -> bool:
    return simple_registry.singleton.find(qualname).fake_impl.kernel is not None


def _has_op(name: str) -> bool:
    return hasattr(torch.ops.seer_kernels, name)


def _file_problems(path: Path, op: str, what: str) -> list[str]:
    """A test or benchmark file must exist, take its backends from the declaration
    (`available_backends(..., op="<op>")`) and compare against `reference.<op>`."""
    if not path.exists():
        return [f"no {what} {path.relative_to(ROOT)}"]
    tree = ast.parse(path.read_text())
    grid = any(
        isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "available_backends"
        and any(kw.arg == "op" and getattr(kw.value, "value", None) == op for kw in node.keywords)
        for node in ast.walk(tree)
    )
    oracle = any(
        isinstance(node, ast.Attribute)
        and node.attr == op
        and isinstance(node.value, ast.Name)
        and node.value.id == "reference"
        for node in ast.walk(tree)
    )
    problems = [] if grid else [f'{what} {path.name} has no available_backends(..., op="{op}") grid']
    return problems + ([] if oracle else [f"{what} {path.name} never calls reference.{op}"])


def _kernel_problems(spec: _registry.Op) -> list[str]:
    """Each declared backend has its kernels, each C++ and Triton op a fake; a backend
    whose kernels are registered is declared."""
    problems = []
    if _backend.extension() is not None:
        keys = {"cpu": "CPU", "cuda": "CUDA"} if _backend._C_HAS_CUDA else {"cpu": "CPU"}
        for kernel in spec.kernels:
            qualname = f"seer_kernels::{kernel}"
            if not _has_op(kernel):
                problems.append(f"no op {qualname} (declare it in csrc/ops.cpp)")
                continue
            if not _has_fake(qualname):
                problems.append(f"no fake kernel for {qualname}")
            for backend, key in keys.items():
                has = torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)
                if has != (backend in spec.backends):
                    state = "declared but has no" if not has else "not declared but has a"
                    problems.append(f"{spec.name}: backend {backend!r} {state} {key} kernel for {qualname}")
    if _backend._HAS_TRITON:
        for kernel in spec.kernels:
            qualname = f"seer_kernels::{kernel}_triton"
            has = _has_op(f"{kernel}_triton")
            if has != ("triton" in spec.backends):
                state = "declared but has no" if not has else "not declared but has a"
                problems.append(f"{spec.name}: backend 'triton' {state} Triton op {qualname}")
            elif has and not _has_fake(qualname):
                problems.append(f"no fake kernel for {qualname}")
    return problems


def _problems(spec: _registry.Op) -> list[str]:
    name = spec.name
    problems = (
        [] if callable(getattr(reference, name, None)) else [f"no reference seer_kernels.reference.{name}"]
    )
    if not callable(getattr(sk, name, None)):
        problems.append(f"no public function seer_kernels.{name}")
    problems += _file_problems(ROOT / "tests" / f"test_{name}.py", name, "test file")
    problems += _file_problems(ROOT / "benchmarks" / f"bench_{name}.py", name, "benchmark")
    return problems + _kernel_problems(spec)


@pytest.mark.parametrize("op", OPS)
def test_declared_op_is_complete(op):
    assert _problems(_registry.op(op)) == []


def test_an_incomplete_op_is_reported():
    """The check above can fail: an op declared with nothing behind it lists every gap."""
    problems = "\n".join(_problems(_registry.Op("toy_op", kernels=("toy_op",))))
    for gap in ("reference.toy_op", "seer_kernels.toy_op", "test_toy_op.py", "bench_toy_op.py"):
        assert gap in problems
    if _backend.extension() is not None:
        assert "no op seer_kernels::toy_op" in problems
    # sinkhorn has CPU kernels: declaring it without "cpu" is caught too.
    undeclared = _registry.Op("sinkhorn", kernels=("sinkhorn",), backends=("reference", "cuda", "triton"))
    if _backend.extension() is not None:
        assert any("'cpu' not declared but has a CPU kernel" in p for p in _kernel_problems(undeclared))


def test_demo_has_a_case_per_op():
    assert list(demo.cases()) == OPS


def test_default_order_derives_from_the_declaration():
    assert _registry.default_orders() == _backend.DEFAULT_ORDER
    for op in OPS:
        for device_type in _registry.DEVICE_TYPES:
            order = _backend.DEFAULT_ORDER[f"{op}:{device_type}"]
            assert set(order) <= set(_registry.op(op).backends) and order[-1] == "reference"
    toy = _registry.Op("toy_op", kernels=(), backends=("reference", "cuda"))
    assert toy.default_order("cuda") == ("cuda", "reference")
    assert toy.default_order("cpu") == ("reference",)
    assert toy.gpu_backends() == ("cuda",)


def test_resolution_keeps_to_the_ops_backends(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setitem(
        _registry.OPS, "toy_op", _registry.Op("toy_op", kernels=(), backends=("reference", "cpu"))
    )
    monkeypatch.setattr(_backend, "DEFAULT_ORDER", _registry.default_orders())
    assert set(_backend.available_backends("cpu", op="toy_op")) <= {"reference", "cpu"}
    assert "triton" not in _backend.available_backends(op="toy_op")
    with pytest.raises(
        RuntimeError, match=r"'triton' has no kernel for toy_op; toy_op has: \['reference', 'cpu'\]"
    ):
        _backend.resolve("triton", cpu, "toy_op")
    # Every backend usable on the device: the default still keeps to the op's own.
    monkeypatch.setattr(_backend, "_usable", lambda name, device_type, op="": _backend._declared(name, op))
    assert _backend.resolve(None, torch.device("cuda"), "toy_op") == "reference"
    assert _backend.resolve(None, cpu, "toy_op") == "cpu"
    monkeypatch.setenv("SEER_KERNELS_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="'cuda' has no kernel for toy_op"):
        _backend.resolve(None, cpu, "toy_op")


def test_unknown_op_names_the_declared_ones():
    with pytest.raises(ValueError, match=r"op must be one of \('sinkhorn', 'prototype_scores'"):
        _backend.available_backends("cpu", op="sinkhorn_typo")
    with pytest.raises(ValueError, match="op must be one of"):
        _backend.resolve(None, torch.device("cpu"), "sinkhorn_typo")


def test_config_allows_exactly_the_declared_backends():
    from seer.config import ConfigError, load_config

    for name in _registry.BACKENDS:
        assert load_config(None, [f"swav.backend={name}"]).swav.backend == name
    with pytest.raises(ConfigError, match=", ".join(_registry.BACKENDS)):
        load_config(None, ["swav.backend=fastest"])

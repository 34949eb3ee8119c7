"""The op declaration (seer_kernels/_registry.py) against what exists: every declared op
has a reference, a public wrapper, fake kernels, a test grid, a benchmark and a demo case,
and every backend it declares has its kernels registered (and no registered kernel goes
undeclared); backend resolution never picks a backend the op lacks. Every op registers
through seer_kernels/_library.py from its module seer_kernels/ops/<op>.py, and the Triton
kernel modules (seer_kernels/triton/) register nothing, so they can be imported and reused."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from torch._library import simple_registry

import seer_kernels as sk
from seer_kernels import _backend, _library, _registry, demo, reference

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
            # The reference ends every order (the fallback), or leads it where no machine
            # has measured the op's fused backends on that device yet.
            assert set(order) <= set(_registry.op(op).backends) and "reference" in (order[0], order[-1])
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


# ------------------------------------------------------- one registration path per op

PACKAGE = ROOT / "seer_kernels"
# torch.library's registering functions (wrap_triton, which only wraps a launch, is not one).
REGISTERING = {
    "custom_op",
    "triton_op",
    "register_fake",
    "register_autograd",
    "register_kernel",
    "Library",
    "impl",
    "define",
}


def _library_calls(tree: ast.AST) -> list[str]:
    """The torch.library registrations in a module: `torch.library.<f>` for f in
    REGISTERING, and names imported from torch.library."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in REGISTERING
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "library"
        ):
            found.append(f"torch.library.{node.attr} (line {node.lineno})")
        if isinstance(node, ast.ImportFrom) and node.module == "torch.library":
            found += [f"from torch.library import {a.name}" for a in node.names if a.name in REGISTERING]
    return found


def _imported(tree: ast.AST) -> list[str]:
    """Every module a module imports (`from p import m` counts p.m when m is a module of
    the package), and `import_module`/`__import__` calls, which no AST check can follow."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [
                f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")
            ]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            names.append(f"<dynamic import, line {node.lineno}>")
    return names


def _module_file(name: str) -> Path | None:
    """The source file of seer_kernels module `name`, None for the package root and for
    what is not a source file of the package (the compiled extension seer_kernels._C)."""
    if not name.startswith("seer_kernels."):
        return None
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _side_effect_problems(source: str, where: str, seen: set[str]) -> list[str]:
    """Why importing a module (given its source) would register ops: a torch.library
    registration in it, or an import of anything but the standard library, torch,
    triton and seer_kernels modules that pass the same check (followed transitively)."""
    tree = ast.parse(source)
    problems = [f"{where}: registers ({call})" for call in _library_calls(tree)]
    for name in _imported(tree):
        root = name.split(".")[0]
        if root in ("torch", "triton", "__future__") or root in sys.stdlib_module_names:
            continue
        path = _module_file(name)
        if path is None:
            if name != "seer_kernels":  # `from seer_kernels import m`: m is checked on its own
                problems.append(f"{where}: imports {name}, which may register ops")
            continue
        if name not in seen:
            seen.add(name)
            problems += _side_effect_problems(path.read_text(), name, seen)
    return problems


TRITON_MODULES = sorted(p for p in (PACKAGE / "triton").glob("*.py"))


@pytest.mark.parametrize("path", TRITON_MODULES, ids=lambda p: p.name)
def test_triton_modules_register_nothing(path):
    """Kernels and launchers importable for reuse: no torch.library call, and nothing
    imported that registers ops (seer_kernels._C, _backend, _library, the op modules)."""
    assert _side_effect_problems(path.read_text(), path.name, set()) == []


def test_the_side_effect_check_can_fail():
    source = "import torch\nfrom seer_kernels import _backend, _dtypes\ntorch.library.custom_op('a::b', f)\n"
    problems = "\n".join(_side_effect_problems(source, "toy.py", set()))
    assert "torch.library.custom_op" in problems
    assert "seer_kernels._backend" in problems  # it loads seer_kernels._C (importlib)
    assert "_dtypes" not in problems
    assert "ops/sinkhorn" not in problems
    for module in ("seer_kernels.ops.sinkhorn", "seer_kernels._library", "seer_kernels._C"):
        assert _side_effect_problems(f"import {module}\n", "toy.py", set()), module


def _registers_through_library(path: Path, op: str) -> bool:
    """The module calls `_library.register("<op>", ...)`."""
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "register"
        and getattr(node.func.value, "id", None) == "_library"
        and node.args
        and getattr(node.args[0], "value", None) == op
        for node in ast.walk(ast.parse(path.read_text()))
    )


@pytest.mark.parametrize("op", OPS)
def test_each_op_has_its_module_and_registers_through_the_library(op):
    path = PACKAGE / "ops" / f"{op}.py"
    assert path.exists(), f"no op module seer_kernels/ops/{op}.py"
    assert _registers_through_library(path, op), (
        f"seer_kernels/ops/{op}.py does not call _library.register({op!r}, ...)"
    )
    assert getattr(sk, op).__module__ == f"seer_kernels.ops.{op}"


def test_library_registered_exactly_the_declared_ops():
    assert _library.registered() == set(_registry.OPS)


def test_only_the_library_registers():
    """One registration path: no module of the package but _library.py calls torch.library."""
    calls = {
        str(path.relative_to(ROOT)): _library_calls(ast.parse(path.read_text()))
        for path in PACKAGE.rglob("*.py")
        if path.name != "_library.py"
    }
    assert {path: found for path, found in calls.items() if found} == {}


def test_no_module_is_shadowed_by_a_function():
    """seer_kernels.<op> is the public function; the op's modules are seer_kernels.ops.<op>
    and seer_kernels.triton.<op>, each reachable under its own name."""
    import importlib

    for op in OPS:
        assert f"seer_kernels.{op}" not in sys.modules
        assert importlib.import_module(f"seer_kernels.ops.{op}").__name__ == f"seer_kernels.ops.{op}"

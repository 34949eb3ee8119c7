"""The one way an op is registered and the one way its public wrapper calls a backend.

Registration, `register(op, fakes=..., autograd=...)`, called once by seer_kernels/ops/<op>.py
for the op `_registry.OPS[op]` declares, with one fake kernel per schema op k of the
declaration's `kernels`:
  cpu, cuda  the C++ schema ops `seer_kernels::<k>` (csrc/ops.cpp) get their fake kernel
             and, for a differentiable op, autograd on the forward op; only when
             seer_kernels._C loaded (without it the schemas do not exist).
  triton     the ops `seer_kernels::<k>_triton` are defined from the launchers
             `seer_kernels.triton.<op>.<k>` (their annotations give the schema) and get the
             same fake kernels and autograd; only when triton is installed and the op
             declares "triton".
Fake kernels are always the ones given here, for both kinds of op, so torch.compile sees
the same output metadata whichever backend runs.

The interpreter rule, in one place (`_define_triton_op`): a Triton op is a
`torch.library.triton_op` (torch.compile traces into its kernels), except under
TRITON_INTERPRET=1, where it is a `torch.library.custom_op` (opaque to torch.compile,
which then only needs the fake kernel). Under the interpreter the kernels are Python
functions that torch refuses to wrap (`seer_kernels._interpreter.wrap_triton` launches
them bare), so tracing into a triton_op would run them on fake tensors.

Call path, `run(op, backend, *args)`: the op's forward on a backend resolved by
`_backend.resolve`, the same way for every op and backend ("reference" calls
`seer_kernels.reference.<op>`, "cpu"/"cuda" `torch.ops.seer_kernels.<forward>`, "triton"
`torch.ops.seer_kernels.<forward>_triton`); `kernel(op, backend, name)` is the op of one
schema op on a backend (sinkhorn's distributed path composes its building blocks so).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from seer_kernels import _backend, _registry, reference

NAMESPACE = "seer_kernels"


@dataclass(frozen=True)
class Autograd:
    """The gradient of a differentiable op's forward (the declaration's first kernel):
    `setup_context(ctx, inputs, output)` saves what the backward needs, and
    `backward(ctx, backward_op, *grads)` returns one gradient (or None) per forward input,
    calling `backward_op`: the schema op `kernel` on the forward's own backend."""

    kernel: str
    setup_context: Callable
    backward: Callable


# The ops registered so far: torch.library's registrations are process-wide, and so is
# this record of them (tests/test_registry.py compares it with the declaration).
_REGISTERED: set[str] = set()


def registered() -> frozenset[str]:
    """The names of the ops registered through `register`."""
    return frozenset(_REGISTERED)


def _qualname(kernel: str, triton: bool) -> str:
    return f"{NAMESPACE}::{kernel}_triton" if triton else f"{NAMESPACE}::{kernel}"


# The launcher behind each Triton op, by qualified name: what the op runs on a GPU (the
# launch audit, benchmarks/audit.py, runs them on fake tensors to count their launches).
TRITON_LAUNCHERS: dict[str, Callable] = {}


def _define_triton_op(qualname: str, launcher: Callable) -> None:
    """The interpreter rule (see the module docstring)."""
    TRITON_LAUNCHERS[qualname] = launcher
    if _backend.triton_interpreted():
        torch.library.custom_op(qualname, launcher, mutates_args=())
    else:
        torch.library.triton_op(qualname, launcher, mutates_args=())


def _autograd_backward(autograd: Autograd, triton: bool) -> Callable:
    backward_op = kernel_op(autograd.kernel, "triton" if triton else "cpu")

    def backward(ctx, *grads):
        return autograd.backward(ctx, backward_op, *grads)

    return backward


def _register_kind(spec: _registry.Op, triton: bool, fakes: dict, autograd: Autograd | None) -> None:
    """Fake kernels and autograd of the C++ schema ops, or of the Triton ops."""
    for name in spec.kernels:
        torch.library.register_fake(_qualname(name, triton), fakes[name])
    if autograd is not None:
        torch.library.register_autograd(
            _qualname(spec.kernels[0], triton),
            _autograd_backward(autograd, triton),
            setup_context=autograd.setup_context,
        )


def _check(spec: _registry.Op, fakes: dict, autograd: Autograd | None) -> None:
    if spec.name in _REGISTERED:
        raise RuntimeError(f"op {spec.name} is registered already")
    if set(fakes) != set(spec.kernels):
        raise ValueError(f"{spec.name}: fakes must be given for exactly {spec.kernels}, got {tuple(fakes)}")
    if autograd is not None and autograd.kernel not in spec.kernels[1:]:
        raise ValueError(f"{spec.name}: the backward kernel must be one of {spec.kernels[1:]}")


def register(op: str, *, fakes: dict[str, Callable], autograd: Autograd | None = None) -> None:
    """Register the declared op `op`: fake kernels (one per schema op, keyed by its name),
    autograd when it is differentiable, and its Triton ops."""
    spec = _registry.op(op)
    _check(spec, fakes, autograd)
    if _backend.extension() is not None:
        _register_kind(spec, False, fakes, autograd)
    if _backend._HAS_TRITON and "triton" in spec.backends:
        # Imported here, only with triton installed: the launcher modules import triton.
        launchers = importlib.import_module(f"{NAMESPACE}.triton.{op}")
        for name in spec.kernels:
            _define_triton_op(_qualname(name, True), getattr(launchers, name))
        _register_kind(spec, True, fakes, autograd)
    _REGISTERED.add(op)


def kernel_op(name: str, backend: str):
    """The registered op of schema op `name` on fused `backend` ("cpu", "cuda", "triton")."""
    return getattr(torch.ops.seer_kernels, f"{name}_triton" if backend == "triton" else name)


def kernel(op: str, backend: str, name: str):
    """`kernel_op` for one of op `op`'s declared schema ops."""
    if name not in _registry.op(op).kernels:
        raise ValueError(f"{op} has no kernel {name!r}; it has {_registry.op(op).kernels}")
    return kernel_op(name, backend)


def run(op: str, backend: str, *args):
    """Op `op`'s forward on the resolved `backend`, as the public function returns it:
    `reference.<op>(*args)`, or the forward schema op's result, whose first output is the
    op's when it returns several (the others are kept for its backward)."""
    if backend == "reference":
        return getattr(reference, op)(*args)
    out = kernel_op(_registry.op(op).kernels[0], backend)(*args)
    return out[0] if isinstance(out, tuple) else out

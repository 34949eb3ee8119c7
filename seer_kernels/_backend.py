"""Which backends are built and usable, and which one runs a given call.

Backends:
  reference  plain PyTorch (seer_kernels.reference), any device.
  cpu        the compiled C++ kernels of seer_kernels._C, CPU tensors.
  cuda       the compiled CUDA kernels of seer_kernels._C, CUDA tensors.
  triton     the Triton kernels, CUDA tensors (and CPU tensors when TRITON_INTERPRET=1
             was set before triton was imported; that is how CI tests them).

`backend=None` picks the first usable entry of the op's default order for the tensor's
device (declared in seer_kernels/_registry.py, with the backends each op has); the
environment variable SEER_KERNELS_BACKEND overrides that choice.
"""

from __future__ import annotations

import importlib
import os

import torch

from seer_kernels import _registry

# Defined apart (seer_kernels/_interpreter.py) so that the Triton kernel modules can launch
# without importing this module, which loads seer_kernels._C and so registers its ops.
from seer_kernels._interpreter import triton_interpreted, wrap_triton  # noqa: F401

BACKENDS = _registry.BACKENDS
# Fastest first, per device type and per "op:device" (see benchmarks/results for the
# measurements behind each order).
DEFAULT_ORDER = _registry.default_orders()


def _load_extension():
    try:
        return importlib.import_module("seer_kernels._C"), None
    except ImportError as exc:
        return None, str(exc)


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# Facts fixed for the life of the process, read once at import so that torch.compile
# traces backend selection as constants instead of breaking the graph on an import.
_C, _C_ERROR = _load_extension()
_C_HAS_CUDA = bool(_C is not None and _C.build_info()["cuda"])
_HAS_TRITON = _has_triton()


def extension():
    """The compiled module seer_kernels._C, or None when it is not built."""
    return _C


def build_info() -> dict:
    """How seer_kernels._C was compiled (compiler, torch, CUDA version and archs)."""
    if _C is None:
        raise RuntimeError(f"seer_kernels._C is not built: {_C_ERROR}")
    return dict(_C.build_info())


def _cuda_available() -> bool:
    """torch.cuda.is_available(), in one place: the launch audit (benchmarks/audit.py)
    replaces it to resolve backends for fake CUDA tensors on a machine without a GPU."""
    return torch.cuda.is_available()


def _triton_on_cpu() -> bool:
    """Whether the Triton kernels run on CPU tensors: under TRITON_INTERPRET=1 (the launch
    audit replaces it to trace CPU-typed fake tensors)."""
    return triton_interpreted()


def _declared(name: str, op: str) -> bool:
    """Whether `op` has a kernel for backend `name` (every backend when op is "")."""
    return not op or name in _registry.op(op).backends


def _usable(name: str, device_type: str, op: str = "") -> bool:
    if not _declared(name, op):
        return False
    if name == "reference":
        return True
    if name == "cpu":
        return device_type == "cpu" and _C is not None
    if name == "cuda":
        return device_type == "cuda" and _C_HAS_CUDA and _cuda_available()
    if name == "triton":
        return _HAS_TRITON and (
            _cuda_available() if device_type == "cuda" else device_type == "cpu" and _triton_on_cpu()
        )
    return False


def available_backends(device: str | torch.device | None = None, op: str | None = None) -> list[str]:
    """Backends usable for tensors on `device` (default: every device this process has),
    of op `op` (default: of any op)."""
    op = op or ""
    if op:
        _registry.op(op)  # an unknown op name is an error, not an empty list
    if device is None:
        types = ["cpu"] + (["cuda"] if _cuda_available() else [])
        return [b for b in BACKENDS if any(_usable(b, t, op) for t in types)]
    device_type = torch.device(device).type
    return [b for b in BACKENDS if _usable(b, device_type, op)]


ENV_VAR = "SEER_KERNELS_BACKEND"


def default_backend(device: torch.device, op: str = "") -> str:
    """The fastest usable of the op's declared backends on `device` (what `backend=None`
    runs when SEER_KERNELS_BACKEND is unset)."""
    key = f"{op}:{device.type}" if op else device.type
    if op:
        _registry.op(op)  # a misspelt op name fails here, not as a silent "reference"
    for name in DEFAULT_ORDER.get(key, ("reference",)):
        if _usable(name, device.type, op):
            return name
    return "reference"


def resolve(backend: str | None, device: torch.device, op: str = "") -> str:
    """The backend that runs a call of `op` on `device`: explicit argument, else the
    SEER_KERNELS_BACKEND environment variable, else the fastest usable one of the op's
    declared backends."""
    from_env = backend is None
    requested = backend if backend is not None else os.environ.get(ENV_VAR) or None
    if requested is None:
        return default_backend(device, op)
    # Where a wrong name came from: the call's argument or the environment variable.
    source = f"environment variable {ENV_VAR}={requested!r}: " if from_env else ""
    if requested not in BACKENDS:
        if from_env:
            raise ValueError(
                f"{source}not a backend; valid values: {', '.join(BACKENDS)} "
                "(or unset it for the fastest usable backend)"
            )
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {requested!r}")
    if not _declared(requested, op):
        raise RuntimeError(
            f"{source}backend {requested!r} has no kernel for {op}; {op} has: {list(_registry.op(op).backends)}"
        )
    if not _usable(requested, device.type, op):
        raise RuntimeError(
            f"{source}backend {requested!r} is not available for {device.type} tensors; "
            f"available: {available_backends(device, op)}"
            + (f" (seer_kernels._C failed to load: {_C_ERROR})" if _C is None else "")
        )
    return requested

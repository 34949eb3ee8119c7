"""`python -m seer_kernels.info`: versions, how the extension was built, and which
backends are built and usable on this machine."""

from __future__ import annotations

import os
import platform
import sys

import torch

from seer_kernels import _backend, _registry


def report() -> list[str]:
    lines = [
        f"python       {sys.version.split()[0]} ({platform.machine()})",
        f"torch        {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
    ]
    try:
        import triton

        triton_line = triton.__version__
    except ImportError:
        triton_line = "not installed"
    lines.append(f"triton       {triton_line}" + (" (interpreter)" if _backend.triton_interpreted() else ""))
    if _backend.extension() is None:
        lines.append(f"extension    NOT BUILT: {_backend._C_ERROR}")
    else:
        info = _backend.build_info()
        lines.append(f"extension    seer_kernels._C, {info['compiler']}, torch {info['torch']}")
        cuda = f"CUDA {info['cuda_version']}, archs {info['cuda_archs']}" if info["cuda"] else "not built"
        lines.append(f"cuda kernels {cuda}")
    if torch.cuda.is_available():
        lines.append(
            f"gpu          {torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()})"
        )
    else:
        lines.append("gpu          none visible")
    for device in ("cpu", "cuda"):
        usable = _backend.available_backends(device)
        defaults = {op: _backend.default_backend(torch.device(device), op) for op in _registry.OPS}
        if len(set(defaults.values())) == 1:
            default = next(iter(defaults.values()))
        else:
            default = ", ".join(f"{op} {name}" for op, name in defaults.items())
        lines.append(f"{device:<4} backends {', '.join(usable)} (default: {default})")
    lines.append(f"{_backend.ENV_VAR:<12} {override()}")
    return lines


def override() -> str:
    """What SEER_KERNELS_BACKEND does here: unset, or the backend every call without
    `backend=` runs, or why it fails (a bad value is reported, not raised)."""
    value = os.environ.get(_backend.ENV_VAR) or ""
    if not value:
        return "unset (calls without backend= run the defaults above)"
    if value not in _backend.BACKENDS:
        return (
            f"{value!r}: NOT A BACKEND, every call without backend= raises ValueError; "
            f"valid values: {', '.join(_backend.BACKENDS)}"
        )
    devices = [d for d in ("cpu", "cuda") if value in _backend.available_backends(d)]
    if not devices:
        return f"{value!r}: NOT USABLE on this machine, every call without backend= raises RuntimeError"
    line = f"{value!r}: calls without backend= run {value} (usable for {' and '.join(devices)} tensors here)"
    missing = [op for op in _registry.OPS if value not in _registry.op(op).backends]
    if missing:
        line += f"; {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no {value} kernel: those calls raise RuntimeError"
    return line


def main() -> None:
    print("\n".join(report()))


if __name__ == "__main__":
    main()

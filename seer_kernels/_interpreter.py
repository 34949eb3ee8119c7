"""Whether Triton runs interpreted, and the launch that follows from it. Imports only os
and torch (triton on first launch) and registers nothing, so both the Triton kernel
modules (seer_kernels/triton/) and backend resolution (_backend) can read it."""

from __future__ import annotations

import os

import torch


def triton_interpreted() -> bool:
    """TRITON_INTERPRET=1: kernels run as Python on CPU tensors (how CI tests them)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def wrap_triton(kernel):
    """`torch.library.wrap_triton(kernel)`: a launch that torch.compile can trace. Under
    TRITON_INTERPRET=1, triton < 3.8 decorates kernels as plain interpreted functions, which
    torch < 2.14 refuses to wrap; nothing is traced under the interpreter, so those launch bare."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    if triton_interpreted() and not isinstance(kernel, (JITFunction, Autotuner)):
        return kernel
    return torch.library.wrap_triton(kernel)

"""The accumulation dtype rule, once for all of Python (csrc/numeric.h holds the C++ one,
acc_type/acc_dtype): sums, norms and losses accumulate in fp32 whatever the input dtype,
so fp16/bf16 inputs lose nothing to the reduction, and in fp64 for fp64 input, so the
float64 oracle is not rounded to fp32. Imports only torch and registers nothing."""

from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 input, fp32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def operand_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    """The one dtype two GEMM operands run in: the autocast dtype under torch.autocast
    (fp64 stays fp64, as autocast leaves it), else their promoted dtype."""
    device_type = a.device.type
    if torch.is_autocast_enabled(device_type) and torch.float64 not in (a.dtype, b.dtype):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(a.dtype, b.dtype)

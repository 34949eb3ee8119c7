"""The accumulation dtype rule, once for all of Python (csrc/numeric.h holds the C++ one,
acc_type/acc_dtype): sums, norms and losses accumulate in fp32 whatever the input dtype,
so fp16/bf16 inputs lose nothing to the reduction, and in fp64 for fp64 input, so the
float64 oracle is not rounded to fp32. Imports only torch and registers nothing."""

from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 input, fp32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32

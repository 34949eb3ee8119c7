"""The tolerance rule shared by every kernel test (flash-attention's rule).

A fused result is compared with a float64 oracle; so is PyTorch's reference at the same
input precision. The fused error may be at most FACTOR times the reference's own error,
plus a floor of a few units in the last place at the result's scale, which covers cases
where the reference happens to be exact (one summation order can land on the exact
value, another a few ulps away):

    max|fused - oracle64| <= FACTOR * max|torch_same_precision - oracle64|
                             + floor * max(1, max|oracle64|)

NaN/Inf anywhere fails unless the oracle has it at the same place.
"""

from __future__ import annotations

import torch

FACTOR = 2.0
# Floors per dtype of the input, for results of unit scale (scaled by the result's
# magnitude above it): a few units in the last place of fp32 results, and the rounding
# of one fp16/bf16 input value for half-precision inputs.
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def max_error(x: torch.Tensor, oracle: torch.Tensor) -> float:
    return (x.detach().double() - oracle.detach().double()).abs().max().item() if x.numel() else 0.0


def assert_close_rule(
    fused: torch.Tensor,
    same_precision: torch.Tensor,
    oracle: torch.Tensor,
    dtype: torch.dtype,
    *,
    factor: float = FACTOR,
    floor: float | None = None,
    what: str = "",
) -> None:
    floor = FLOOR[dtype] if floor is None else floor
    assert fused.shape == oracle.shape, f"{what}: shape {tuple(fused.shape)} != {tuple(oracle.shape)}"
    f64, o64 = fused.detach().double(), oracle.detach().double()
    bad_nonfinite = torch.isfinite(f64) != torch.isfinite(o64)
    if bad_nonfinite.any():
        idx = bad_nonfinite.nonzero()[:5].tolist()
        raise AssertionError(f"{what}: non-finite mismatch at {idx}: fused {f64.flatten()[:5]}")
    fin = torch.isfinite(o64)
    err = max_error(f64[fin], o64[fin])
    ref_err = max_error(same_precision.detach().double()[fin], o64[fin])
    scale = max(1.0, o64[fin].abs().max().item()) if fin.any() else 1.0
    bound = factor * ref_err + floor * scale
    if not err <= bound:
        diff = (f64 - o64).abs().nan_to_num(float("inf"))
        worst = divmod(int(diff.argmax()), max(1, f64.shape[-1])) if f64.dim() >= 2 else int(diff.argmax())
        raise AssertionError(
            f"{what}: fused error {err:.3e} > {factor} x reference error {ref_err:.3e} + {floor:.1e} x {scale:.3g}"
            f" (worst at {worst})"
        )

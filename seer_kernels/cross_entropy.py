"""SwAV's multi-crop swapped-prediction softmax cross-entropy, fused.

Order of this module: Triton kernels, launchers, registration (fake kernels, autograd,
the Triton op), public wrapper. C++ kernels: csrc/cpu/swav_cross_entropy.cpp and
csrc/cuda/swav_cross_entropy.cu; oracle: seer_kernels.reference.swav_cross_entropy.
"""

from __future__ import annotations

import torch

from seer_kernels import _backend, _checks, reference


def swav_cross_entropy(
    scores: torch.Tensor,
    codes: torch.Tensor,
    temperature: float = 0.1,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Scalar SwAV loss of crop `scores` (V, B, K) against assignment `codes` (A, B, K).

    mean over a < A of 1/(V-1) * sum_{v != a} mean_b CE(codes[a, b], softmax(scores[v, b] / T)).
    Differentiable in scores; codes carry no gradient.
    """
    temperature = _checks.swav_cross_entropy_args(scores, codes, temperature)
    name = _backend.resolve(backend, scores.device)
    if name == "reference":
        return reference.swav_cross_entropy(scores, codes, temperature)
    raise NotImplementedError(name)

"""Cosine prototype scores, fused: normalize(embeddings) @ normalize(prototypes)^T.

Order of this module: Triton kernels, launchers, registration (fake kernels, autograd,
the Triton op), public wrapper. C++ kernels: csrc/cpu/prototype_scores.cpp and
csrc/cuda/prototype_scores.cu; oracle: seer_kernels.reference.prototype_scores.
"""

from __future__ import annotations

import torch

from seer_kernels import _backend, _checks, reference


def prototype_scores(
    embeddings: torch.Tensor,
    prototypes: torch.Tensor,
    *,
    normalize: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """(N, D) embeddings x (K, D) prototypes -> (N, K) scores, differentiable in both.

    With normalize (default) both operands are L2-normalized row-wise (eps 1e-12) inside
    the op, so the scores are cosines; no normalized copies are written to memory.
    """
    _checks.prototype_scores_args(embeddings, prototypes)
    name = _backend.resolve(backend, embeddings.device)
    if name == "reference":
        return reference.prototype_scores(embeddings, prototypes, normalize)
    raise NotImplementedError(name)

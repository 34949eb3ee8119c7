"""SwAV's multi-crop swapped-prediction softmax cross-entropy, fused: registration, then
the public wrapper. Kernels: csrc/cpu/swav_cross_entropy.cpp,
csrc/cuda/swav_cross_entropy.cu, seer_kernels/triton/swav_cross_entropy.py (its
docstring has the Triton tiling, bytes and FLOPs); oracle:
seer_kernels.reference.swav_cross_entropy.

Algorithm (every backend). With lse_v[b] = logsumexp_k scores[v, b, k] / T and the
summed targets of crop v, C_v[b] = sum_{a < A, a != v} codes[a, b] and R_v[b] = sum_k
C_v[b, k] (the codes' row sums are not assumed to be 1):
    loss = sum_{v, b} (lse_v[b] R_v[b] - <C_v[b], scores[v, b]> / T) / (A (V - 1) B)
    grad scores[v, b] = grad_loss (R_v[b] softmax(scores[v, b] / T) - C_v[b]) / (T A (V - 1) B)
which is the reference's loop over (a, v != a) pairs regrouped per crop: one logsumexp per
(v, b) serves every a. Forward keeps only lse (V B values) for backward; backward writes
the gradient in one pass. Accumulation is fp32 (fp64 for fp64 scores; seer_kernels/_dtypes.py);
the gradient has the dtype of scores; codes get no gradient.

Memory, CPU backend (measured at K = 65536 by tests/test_memory.py): forward, the V B
fp64 logsumexps it keeps for backward and B fp64 partial losses; backward, the (V, B, K)
gradient. Each direction also uses (A + 2) K accumulation-type values per thread (rows
converted from other dtypes: the A code rows, one score row, one gradient row; allocated
whatever the dtypes). Nothing else of size B K, except contiguous copies of strided inputs.
"""

from __future__ import annotations

import torch

from seer_kernels import _backend, _checks, _library
from seer_kernels._dtypes import accumulation_dtype

# ------------------------------------------------------------------------ registration


def _fake_forward(scores, codes, temperature):
    loss = scores.new_empty((), dtype=accumulation_dtype(scores.dtype))
    return loss, scores.new_empty(scores.shape[:2], dtype=torch.float64)


def _fake_backward(grad_loss, scores, codes, lse, temperature):
    return torch.empty_like(scores, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    scores, codes, temperature = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(scores, codes, output[1])
    ctx.temperature = temperature


def _backward(ctx, backward_op, grad_loss, _grad_lse):
    scores, codes, lse = ctx.saved_tensors
    return backward_op(grad_loss, scores, codes, lse, ctx.temperature), None, None


_library.register(
    "swav_cross_entropy",
    fakes={"swav_cross_entropy": _fake_forward, "swav_cross_entropy_backward": _fake_backward},
    autograd=_library.Autograd("swav_cross_entropy_backward", _setup_context, _backward),
)

# ------------------------------------------------------------------------ public API


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

    Args:
        scores: (V, B, K) prototype scores of V >= 2 crops, fp32/fp16/bf16 (fp64 runs in
            fp64 on the cpu and triton backends).
        codes: (A, B, K) targets of the first A <= V crops (Sinkhorn codes), any float
            dtype; rows need not sum to 1.
        temperature: softmax temperature T > 0 (SwAV 0.1).
        backend: "reference", "cpu", "cuda", "triton" or None (fastest available).
    Returns: the loss, a 0-dim float32 tensor (float64 for float64 scores).
    """
    temperature = _checks.swav_cross_entropy_args(scores, codes, temperature)
    name = _backend.resolve(backend, scores.device, "swav_cross_entropy")
    return _library.run("swav_cross_entropy", name, scores, codes.detach(), temperature)

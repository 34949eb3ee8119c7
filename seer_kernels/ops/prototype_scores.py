"""Cosine prototype scores, fused: normalize(embeddings) @ normalize(prototypes)^T.
Registration, then the public wrapper. Kernels: csrc/cpu/prototype_scores.cpp,
csrc/cuda/prototype_scores.cu, seer_kernels/triton/prototype_scores.py (its docstring has
the Triton algorithm, bytes and FLOPs); oracle: seer_kernels.reference.prototype_scores.

Every backend returns (scores, rn_e, rn_p) from its forward op, rn = 1 / max(||x||, 1e-12)
per row (in the accumulation dtype of seer_kernels/_dtypes.py: fp32, fp64 for fp64 input;
ones when normalize is false); autograd saves the inputs and the two rnorm vectors, never
normalized copies.

Memory, CPU backend (measured at K = 65536 by tests/test_memory.py): forward, besides
the (N, K) scores, normalized copies of both operands ((N + K) D in the GEMM dtype), the
N + K inverse norms and the BLAS GEMM's own packing buffers (a few MiB per thread).
Backward, besides the (N, D) and (K, D) gradients, the normalized copies again and 3 D
values per thread. Nothing else of size N K for fp32, bf16 and fp64; fp16 runs its GEMMs
in fp32 (ATen's fp16 CPU GEMM is 5-10x slower), so it also holds the scores, and in
backward the incoming gradient, as an (N, K) fp32 array.
"""

from __future__ import annotations

import torch

from seer_kernels import _backend, _checks, _library
from seer_kernels._dtypes import accumulation_dtype, operand_dtype

# ------------------------------------------------------------------------ registration


def _fake_forward(embeddings, prototypes, normalize):
    n, k = embeddings.shape[0], prototypes.shape[0]
    acc = accumulation_dtype(embeddings.dtype)
    return (
        embeddings.new_empty((n, k)),
        embeddings.new_empty((n,), dtype=acc),
        embeddings.new_empty((k,), dtype=acc),
    )


def _fake_backward(grad, embeddings, prototypes, embeddings_rnorm, prototypes_rnorm, normalize):
    return embeddings.new_empty(embeddings.shape), prototypes.new_empty(prototypes.shape)


def _setup_context(ctx, inputs, output) -> None:
    embeddings, prototypes, normalize = inputs
    _, rn_e, rn_p = output
    ctx.save_for_backward(embeddings, prototypes, rn_e, rn_p)
    ctx.normalize = normalize


def _backward(ctx, backward_op, grad, _grad_rn_e, _grad_rn_p):
    embeddings, prototypes, rn_e, rn_p = ctx.saved_tensors
    grad_e, grad_p = backward_op(grad, embeddings, prototypes, rn_e, rn_p, ctx.normalize)
    return grad_e, grad_p, None


_library.register(
    "prototype_scores",
    fakes={"prototype_scores": _fake_forward, "prototype_scores_backward": _fake_backward},
    autograd=_library.Autograd("prototype_scores_backward", _setup_context, _backward),
)

# ------------------------------------------------------------------------ public API


def _same_dtype(embeddings: torch.Tensor, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One operand dtype (seer_kernels._dtypes.operand_dtype)."""
    dtype = operand_dtype(embeddings, prototypes)
    return embeddings.to(dtype), prototypes.to(dtype)


def prototype_scores(
    embeddings: torch.Tensor,
    prototypes: torch.Tensor,
    *,
    normalize: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """(N, D) embeddings x (K, D) prototypes -> (N, K) scores, differentiable in both.

    With normalize (default) both operands are L2-normalized row-wise (eps 1e-12) inside
    the op, so the scores are cosines; no normalized copies are written to memory on the
    Triton path (the CPU path normalizes the small operands before its BLAS GEMM).
    Accumulation is fp32 (fp64 for fp64 input); the scores have the operands' dtype
    (the promoted one if they differ, the autocast dtype under torch.autocast).
    """
    _checks.prototype_scores_args(embeddings, prototypes)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    name = _backend.resolve(backend, embeddings.device, "prototype_scores")
    embeddings, prototypes = _same_dtype(embeddings, prototypes)
    return _library.run("prototype_scores", name, embeddings, prototypes, normalize)

"""The SwAV head without its score matrix: prototype scoring and the multi-crop
swapped-prediction cross-entropy fused into one op (fused linear cross-entropy, as
Liger-Kernel and Apple's Cut Cross-Entropy do for language models). Registration, then the
public wrapper. Kernels: csrc/cpu/prototype_cross_entropy.cpp,
seer_kernels/triton/prototype_cross_entropy.py; oracle:
seer_kernels.reference.prototype_cross_entropy.

The op computes
    swav_cross_entropy(prototype_scores(e.view(V B, D), p, normalize).view(V, B, K), codes, T)
for embeddings e (V, B, D), prototypes p (K, D) and codes (A, B, K) of the first A crops,
differentiable in e and p, never holding the (V B, K) scores or their gradient.

Algorithm (every backend). With s[v, b, k] = <e_hat[v, b], p_hat[k]> (x_hat = x / max(||x||,
1e-12), or x when normalize is false), lse[v, b] = logsumexp_k s / T, C_v[b] = sum_{a < A,
a != v} codes[a, b] and R_v[b] = sum_k C_v[b, k]:
    loss = sum_{v, b} (R_v[b] lse[v, b] - <C_v[b], s[v, b]> / T) / (A (V - 1) B)
    G[v, b] = (R_v[b] softmax(s[v, b] / T) - C_v[b]) / (T A (V - 1) B)       (d loss / d s)
    d loss / d e_hat = G P_hat,  d loss / d p_hat = G^T E_hat,
then the normalization's backward per row (as prototype_scores'). K is streamed in tiles:
per row, a running max and sum of exp give lse, then the tiles are recomputed or kept to
form G tile by tile and feed the two gradient GEMMs.

Why the gradient is computed in the forward (Liger's choice, not CCE's recomputation in a
separate backward): the loss is a scalar, so d loss / d e = grad_loss * (the gradient at
grad_loss = 1), and the backward op only scales the two saved gradients ((V B + K) D
values). Recomputing the scores in the backward (CCE) would cost a fourth GEMM, 2 V B K D
FLOPs: at (V, B, D, K) = (10, 256, 256, 65536) 86 GFLOP, ~0.6 s on a 2-core AVX2 CPU,
against ~1.7 s for the three GEMMs every design needs. The price: the forward always pays
for both gradients (3 GEMMs, not 1), also when called without autograd.

Backends:
  cpu     sample blocks of <= 1024 rows, each block's scores for all K in one buffer of at
          most 32 MiB; GEMMs on (block x 64..1024-column tiles) through at::mm on MKL, at
          most 16 groups of tiles as tasks on the at::parallel_for threads, every sum in
          an order fixed by the shapes: the same bits for any thread count. Bytes per block: P read twice,
          grad_P read and written once (3 K D values of traffic) plus the block's codes;
          FLOPs 6 V B K D + per score 2 exp and (A + 5) flops. csrc/cpu/prototype_cross_entropy.cpp
          has the details.
  triton  two launches (seer_kernels/triton/prototype_cross_entropy.py has the bytes and
          FLOPs): a rows kernel (a program per 16-32 rows holds them with the whole D,
          normalizes in-kernel, streams K tiles on tl.dot twice: lse, then grad_E) and a
          cols kernel (a program per 16-32 prototypes streams every row block: grad_P;
          its program 0 sums the loss partials in index order). Score tiles are
          recomputed rather than stored (5 GEMMs of FLOPs against 3, no (V B, K) array).
          The backward is one scaling launch. Proven under TRITON_INTERPRET=1 and compiled
          for sm_90 (no spill); no GPU has run it.
  reference  prototype_scores into swav_cross_entropy, holding the (V B, K) scores.
On CUDA tensors the default is `reference` until a GPU has measured the fused kernels
(seer_kernels/_registry.py); backend="triton" runs them.

Numerics: accumulation in fp32 (fp64 for fp64 input; seer_kernels/_dtypes.py): the
normalized operands, the scores, lse (double per row), G and both gradient GEMMs; the
loss is a double sum of per-row terms R log(sum exp((s - max) / T)) + <C, max - s> / T (no
cancellation between large numbers), returned as fp32 (fp64 for fp64 input). The
gradients have the dtype of the operands. Codes get no gradient; their rows need not sum
to 1.

Memory, CPU backend (measured at K = 65536 by tests/test_memory.py), besides the two
gradients it returns ((V B + K) D in the operands' dtype, kept for backward): normalized
copies E_hat and the unprojected grad E_hat (V B D accumulation-type values each), P_hat
(K D; none when normalize is false and the operands are fp32/fp64), the unprojected grad
P_hat (K D; none for fp32/fp64, where the output is used in place), the block buffer
(at most 32 MiB, whatever the dtype), at most 16 block-sized grad E_hat partials (16 x 1024
x D), A + 3 values per (crop, sample) pair, and A x 1024 values per thread. The only O(B K)
array is the codes passed in. Backward: the two scaled gradients.

Memory, Triton backend: the two gradients, 3 V B doubles (lse, R, inverse norms) and one
double per rows-kernel program; registers and shared memory per program (no scratch).
"""

from __future__ import annotations

import torch

from seer_kernels import _backend, _checks, _library
from seer_kernels._dtypes import accumulation_dtype, operand_dtype

# ------------------------------------------------------------------------ registration


def _fake_forward(embeddings, prototypes, codes, temperature, normalize):
    loss = embeddings.new_empty((), dtype=accumulation_dtype(embeddings.dtype))
    return (
        loss,
        torch.empty_like(embeddings, memory_format=torch.contiguous_format),
        torch.empty_like(prototypes, memory_format=torch.contiguous_format),
    )


def _fake_backward(grad_loss, grad_embeddings, grad_prototypes):
    return torch.empty_like(grad_embeddings), torch.empty_like(grad_prototypes)


def _setup_context(ctx, inputs, output) -> None:
    _, grad_e, grad_p = output
    ctx.mark_non_differentiable(grad_e, grad_p)
    # The saved gradients are outputs nobody differentiates: without this autograd hands
    # backward zero tensors of their size ((V B + K) D values) for them.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_e, grad_p)


def _backward(ctx, backward_op, grad_loss, _grad_e, _grad_p):
    if grad_loss is None:  # not materialized: the loss itself took no part downstream
        return None, None, None, None, None
    grad_e, grad_p = ctx.saved_tensors
    d_e, d_p = backward_op(grad_loss, grad_e, grad_p)
    return d_e, d_p, None, None, None


_library.register(
    "prototype_cross_entropy",
    fakes={
        "prototype_cross_entropy": _fake_forward,
        "prototype_cross_entropy_backward": _fake_backward,
    },
    autograd=_library.Autograd("prototype_cross_entropy_backward", _setup_context, _backward),
)

# ------------------------------------------------------------------------ public API


def prototype_cross_entropy(
    embeddings: torch.Tensor,
    prototypes: torch.Tensor,
    codes: torch.Tensor,
    temperature: float = 0.1,
    *,
    normalize: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """SwAV's loss straight from embeddings: the scores of `embeddings` (V, B, D) against
    `prototypes` (K, D) into the multi-crop cross-entropy against `codes` (A, B, K), without
    the (V B, K) score matrix.

    Equals `swav_cross_entropy(prototype_scores(embeddings.view(V * B, D), prototypes,
    normalize=normalize).view(V, B, K), codes, temperature)`: mean over a < A of
    1/(V-1) sum_{v != a} mean_b CE(codes[a, b], softmax(scores[v, b] / T)).

    Args:
        embeddings: (V, B, D) embeddings of V >= 2 crops of B images, fp32/bf16/fp16
            (fp64 runs in fp64); differentiable.
        prototypes: (K, D) prototype weights; differentiable. Both operands run in one
            dtype: the autocast dtype under torch.autocast, else their promoted dtype.
        codes: (A, B, K) targets of the first A <= V crops (Sinkhorn codes, e.g. the first
            B rows of `sinkhorn` on (A, B + Q, K) scores), any float dtype; no gradient.
        temperature: softmax temperature T > 0 (SwAV 0.1).
        normalize: cosine scores (both operands L2-normalized per row inside the op,
            eps 1e-12), or the plain product.
        backend: "reference", "cpu", "triton" or None (the declared default).
    Returns: the loss, a 0-dim float32 tensor (float64 for float64 operands).
    """
    temperature = _checks.prototype_cross_entropy_args(embeddings, prototypes, codes, temperature, normalize)
    name = _backend.resolve(backend, embeddings.device, "prototype_cross_entropy")
    dtype = operand_dtype(embeddings, prototypes)
    return _library.run(
        "prototype_cross_entropy",
        name,
        embeddings.to(dtype),
        prototypes.to(dtype),
        codes.detach(),
        temperature,
        normalize,
    )

// The seer_kernels operator schemas, declared once. Kernels live in csrc/cpu/*.cpp
// (dispatch key CPU) and csrc/cuda/*.cu (dispatch key CUDA); fake (meta) kernels and
// autograd are registered from Python (seer_kernels/ops/<op>.py, through
// seer_kernels/_library.py). Triton kernels (seer_kernels/triton/<op>.py) enter as their
// own ops through torch.library.triton_op (seer_kernels::*_triton).
#include <torch/library.h>

TORCH_LIBRARY(seer_kernels, m) {
  // Sinkhorn-Knopp codes (SwAV). scores (B, K) fp32/bf16/fp16 -> codes (B, K) fp32, or
  // (A, B, K) -> (A, B, K): A crops, each its own problem (CPU kernels; the CUDA kernels
  // take (B, K) only, and the Python wrapper calls them once per crop).
  m.def("sinkhorn(Tensor scores, float epsilon, int iterations) -> Tensor");
  // Building blocks of the distributed Sinkhorn (one pass over the rows each).
  // x[b, k] = scores[b, k] / epsilon + log_u[k], minus logsumexp_k x[b, :] when
  // normalize_rows. colstats returns (2, K) fp32: row 0 = a finite per-column shift
  // (max_b x, or 0 where that is not finite; 0 when normalize_rows, as softmax entries
  // need none), row 1 = sum_b exp(x - shift), so logsumexp_b x = row 0 + log(row 1);
  // codes returns softmax_k(x) (normalize_rows) or exp(x). With crops (CPU kernels):
  // scores (A, B, K) and log_u (A, K) give colstats (A, 2, K) and codes (A, B, K).
  m.def(
      "sinkhorn_colstats(Tensor scores, Tensor log_u, float epsilon, bool normalize_rows) -> "
      "Tensor");
  m.def(
      "sinkhorn_codes(Tensor scores, Tensor log_u, float epsilon, bool normalize_rows) -> Tensor");

  // Cosine prototype scores: (N, D) x (K, D) -> (N, K), plus the fp32 (fp64 for fp64 input) inverse
  // row norms of both operands (ones when normalize is false), saved for backward.
  m.def(
      "prototype_scores(Tensor embeddings, Tensor prototypes, bool normalize) -> (Tensor, Tensor, "
      "Tensor)");
  m.def(
      "prototype_scores_backward(Tensor grad, Tensor embeddings, Tensor prototypes, Tensor "
      "embeddings_rnorm, Tensor prototypes_rnorm, bool normalize) -> (Tensor, Tensor)");

  // Multi-crop swapped-prediction cross-entropy: scores (V, B, K), codes (A, B, K) ->
  // (scalar loss, fp32 (fp64 for fp64 scores); fp64 (V, B) logsumexp of scores /
  // temperature: backward needs it to better than an fp32 ulp of |lse| ~ |score| / T).
  m.def("swav_cross_entropy(Tensor scores, Tensor codes, float temperature) -> (Tensor, Tensor)");
  m.def(
      "swav_cross_entropy_backward(Tensor grad_loss, Tensor scores, Tensor codes, Tensor lse, "
      "float "
      "temperature) -> Tensor");

  // The fused SwAV head: prototype scores of embeddings (V, B, D) against prototypes (K, D)
  // (cosines when normalize) into the multi-crop cross-entropy against codes (A, B, K),
  // without the (V B, K) scores. Returns (scalar loss, fp32 (fp64 for fp64 input); the
  // gradients of the loss w.r.t. embeddings and prototypes, computed in the forward as
  // Liger's fused linear cross-entropy does); backward scales them by grad_loss.
  m.def(
      "prototype_cross_entropy(Tensor embeddings, Tensor prototypes, Tensor codes, float "
      "temperature, bool normalize) -> (Tensor, Tensor, Tensor)");
  m.def(
      "prototype_cross_entropy_backward(Tensor grad_loss, Tensor grad_embeddings, Tensor "
      "grad_prototypes) -> (Tensor, Tensor)");
}

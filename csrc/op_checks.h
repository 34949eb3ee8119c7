// Argument checks shared by the CPU and CUDA kernels of every op (sinkhorn*,
// prototype_scores*, swav_cross_entropy*, prototype_cross_entropy*): the op-level contract for
// direct torch.ops calls (the Python wrappers check first, with friendlier messages), written once
// so the backends cannot drift apart. Device checks stay with each backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "numeric.h"

namespace seer_kernels {

inline bool supported_float(c10::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Sinkhorn reads fp32, fp16 and bf16 scores (no fp64: it accumulates in fp32 throughout).
inline bool supported_sinkhorn_input(c10::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// scores (B, K), or (A, B, K) (A crops, each its own problem) where the backend's kernels
// take crops (`takes_crops`: the CPU kernels do; the CUDA kernels take one crop per call,
// and seer_kernels.sinkhorn loops over the crops for them), of a supported dtype, and a
// finite epsilon > 0.
inline void check_sinkhorn_scores(const at::Tensor& scores, double epsilon,
                                  bool takes_crops = false) {
  TORCH_CHECK(takes_crops || scores.dim() != 3,
              "sinkhorn: this backend's kernels take 2-D (B, K) scores, one crop per call "
              "(seer_kernels.sinkhorn runs (A, B, K) crops one at a time on it), got shape ",
              scores.sizes());
  TORCH_CHECK(scores.dim() == 2 || (takes_crops && scores.dim() == 3),
              "sinkhorn: scores must be 2-D (B, K)", takes_crops ? " or 3-D (A, B, K)" : "",
              ", got shape ", scores.sizes());
  TORCH_CHECK(std::isfinite(epsilon) && epsilon > 0, "sinkhorn: epsilon must be > 0, got ",
              epsilon);
  TORCH_CHECK(supported_sinkhorn_input(scores.scalar_type()),
              "sinkhorn: scores must be float32, float16 or bfloat16, got ", scores.scalar_type());
}

inline void check_sinkhorn_iterations(int64_t iterations) {
  TORCH_CHECK(iterations >= 0, "sinkhorn: iterations must be >= 0, got ", iterations);
}

// log_u (K,) for scores with K = cols columns.
inline void check_sinkhorn_log_u(const at::Tensor& log_u, int64_t cols) {
  TORCH_CHECK(log_u.dim() == 1 && log_u.size(0) == cols, "sinkhorn: log_u must have shape (", cols,
              ",), got ", log_u.sizes());
}

// log_u (K,) for (B, K) scores, (A, K) (one per crop) for (A, B, K) scores.
inline void check_sinkhorn_log_u(const at::Tensor& log_u, const at::Tensor& scores) {
  if (scores.dim() != 3) return check_sinkhorn_log_u(log_u, scores.size(-1));
  TORCH_CHECK(
      log_u.dim() == 2 && log_u.size(0) == scores.size(0) && log_u.size(1) == scores.size(2),
      "sinkhorn: log_u must have shape (A, K) = (", scores.size(0), ", ", scores.size(2),
      ") for (A, B, K) scores, got ", log_u.sizes());
}

// embeddings (N, D) and prototypes (K, D) of one floating dtype.
inline void check_prototype_operands(const at::Tensor& e, const at::Tensor& p) {
  TORCH_CHECK(e.dim() == 2 && p.dim() == 2,
              "prototype_scores: embeddings (N, D) and prototypes (K, D) must be 2-D");
  TORCH_CHECK(e.size(1) == p.size(1),
              "prototype_scores: embeddings and prototypes must have the same D");
  TORCH_CHECK(e.scalar_type() == p.scalar_type(),
              "prototype_scores: embeddings and prototypes must have one dtype");
  TORCH_CHECK(at::isFloatingType(e.scalar_type()),
              "prototype_scores: inputs must be floating point");
}

// The incoming gradient of the (N, K) scores.
inline void check_prototype_grad(const at::Tensor& grad, const at::Tensor& e, const at::Tensor& p) {
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == e.size(0) && grad.size(1) == p.size(0),
              "prototype_scores_backward: grad must be (N, K)");
}

// The inverse row norms (acc_dtype of x, one per row of x) that prototype_scores returned
// for x, as handed back to prototype_scores_backward; name: the argument's name.
inline void check_prototype_rnorm(const at::Tensor& rn, const at::Tensor& x, const char* name) {
  const auto acc = acc_dtype(x.scalar_type());  // numeric.h
  TORCH_CHECK(rn.dim() == 1 && rn.size(0) == x.size(0), "prototype_scores_backward: ", name,
              " must have one entry per row");
  TORCH_CHECK(rn.scalar_type() == acc, "prototype_scores_backward: ", name, " must be ", acc);
}

// scores (V, B, K) with V >= 2, codes (A, B, K) with 1 <= A <= V, a finite temperature > 0.
inline void check_xent_operands(const at::Tensor& scores, const at::Tensor& codes,
                                double temperature) {
  TORCH_CHECK(scores.dim() == 3, "swav_cross_entropy: scores must be (V, B, K), got ",
              scores.sizes());
  TORCH_CHECK(codes.dim() == 3, "swav_cross_entropy: codes must be (A, B, K), got ", codes.sizes());
  TORCH_CHECK(supported_float(scores.scalar_type()),
              "swav_cross_entropy: scores must be float32/float64/float16/bfloat16, got ",
              scores.scalar_type());
  TORCH_CHECK(supported_float(codes.scalar_type()),
              "swav_cross_entropy: codes must be float32/float64/float16/bfloat16, got ",
              codes.scalar_type());
  const int64_t V = scores.size(0), A = codes.size(0);
  TORCH_CHECK(V >= 2, "swav_cross_entropy: scores must hold V >= 2 crops, got V=", V);
  TORCH_CHECK(A >= 1 && A <= V, "swav_cross_entropy: codes must hold 1 <= A <= V crops, got A=", A,
              " with V=", V);
  TORCH_CHECK(codes.size(1) == scores.size(1) && codes.size(2) == scores.size(2),
              "swav_cross_entropy: codes ", codes.sizes(), " must match scores ", scores.sizes(),
              " in B and K");
  TORCH_CHECK(scores.size(1) > 0 && scores.size(2) > 0,
              "swav_cross_entropy: scores must not be empty, got ", scores.sizes());
  TORCH_CHECK(temperature > 0.0 && std::isfinite(temperature),
              "swav_cross_entropy: temperature must be finite and > 0, got ", temperature);
}

// The backward's extra operands: a scalar grad_loss and the forward's (V, B) lse.
inline void check_xent_backward(const at::Tensor& grad_loss, const at::Tensor& lse, int64_t V,
                                int64_t B) {
  TORCH_CHECK(grad_loss.numel() == 1,
              "swav_cross_entropy_backward: grad_loss must be a scalar, got ", grad_loss.sizes());
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == V && lse.size(1) == B,
              "swav_cross_entropy_backward: lse must be (V, B) = (", V, ", ", B, "), got ",
              lse.sizes());
}

// The fused head (prototype_cross_entropy): embeddings (V, B, D) with V >= 2 and prototypes
// (K, D) of one supported dtype, codes (A, B, K) with 1 <= A <= V, a finite temperature > 0.
inline void check_head_operands(const at::Tensor& e, const at::Tensor& p, const at::Tensor& codes,
                                double temperature) {
  TORCH_CHECK(e.dim() == 3, "prototype_cross_entropy: embeddings must be (V, B, D), got ",
              e.sizes());
  TORCH_CHECK(p.dim() == 2, "prototype_cross_entropy: prototypes must be (K, D), got ", p.sizes());
  TORCH_CHECK(codes.dim() == 3, "prototype_cross_entropy: codes must be (A, B, K), got ",
              codes.sizes());
  TORCH_CHECK(supported_float(e.scalar_type()) && e.scalar_type() == p.scalar_type(),
              "prototype_cross_entropy: embeddings and prototypes must have one dtype of "
              "float32/float64/float16/bfloat16, got ",
              e.scalar_type(), " and ", p.scalar_type());
  TORCH_CHECK(supported_float(codes.scalar_type()),
              "prototype_cross_entropy: codes must be float32/float64/float16/bfloat16, got ",
              codes.scalar_type());
  const int64_t V = e.size(0), B = e.size(1), D = e.size(2), K = p.size(0), A = codes.size(0);
  TORCH_CHECK(V >= 2, "prototype_cross_entropy: embeddings must hold V >= 2 crops, got V=", V);
  TORCH_CHECK(A >= 1 && A <= V,
              "prototype_cross_entropy: codes must hold 1 <= A <= V crops, got A=", A,
              " with V=", V);
  TORCH_CHECK(p.size(1) == D, "prototype_cross_entropy: prototypes ", p.sizes(),
              " must have the D of embeddings ", e.sizes());
  TORCH_CHECK(codes.size(1) == B && codes.size(2) == K, "prototype_cross_entropy: codes ",
              codes.sizes(), " must be (A, B, K) with B of embeddings ", e.sizes(),
              " and K of prototypes ", p.sizes());
  TORCH_CHECK(B > 0 && D > 0 && K > 0, "prototype_cross_entropy: empty operands, embeddings ",
              e.sizes(), ", prototypes ", p.sizes());
  TORCH_CHECK(temperature > 0.0 && std::isfinite(temperature),
              "prototype_cross_entropy: temperature must be finite and > 0, got ", temperature);
}

// The backward's operands: a scalar grad_loss and the forward's two gradients.
inline void check_head_backward(const at::Tensor& grad_loss, const at::Tensor& grad_e,
                                const at::Tensor& grad_p) {
  TORCH_CHECK(grad_loss.numel() == 1,
              "prototype_cross_entropy_backward: grad_loss must be a scalar, got ",
              grad_loss.sizes());
  TORCH_CHECK(grad_e.dim() == 3 && grad_p.dim() == 2 && grad_e.size(2) == grad_p.size(1),
              "prototype_cross_entropy_backward: gradients must be (V, B, D) and (K, D), got ",
              grad_e.sizes(), " and ", grad_p.sizes());
}

}  // namespace seer_kernels

// SwAV multi-crop swapped-prediction cross-entropy, CPU: the ops
// seer_kernels::swav_cross_entropy and seer_kernels::swav_cross_entropy_backward.
//
// With lse_v[b] = logsumexp_k scores[v, b, k] / T, r_a[b] = sum_k codes[a, b, k],
// C_v[b] = sum_{a < A, a != v} codes[a, b] and R_v[b] = sum_{a < A, a != v} r_a[b]:
//   loss = sum_{v, b} (lse_v[b] R_v[b] - <C_v[b], scores[v, b]> / T) / (A (V - 1) B)
//   d loss / d scores[v, b] = (R_v[b] softmax(scores[v, b] / T) - C_v[b]) / (T A (V - 1) B)
// which is the reference's loop over (a, v != a) pairs regrouped per crop: one logsumexp
// per (v, b) serves every a, and forward keeps only those V B values for backward.
//
// This file holds the tensor side: checks, contiguity, threading over samples b, and the
// deterministic loss reduction (one partial per b, summed in index order in double, so
// the result does not depend on the thread count). The row kernels, with the byte and
// FLOP counts, are in swav_cross_entropy_kernels_impl.h, compiled per instruction set (isa.h).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../numeric.h"
#include "../op_checks.h"
#include "isa.h"
#include "swav_cross_entropy_kernels.h"

namespace seer_kernels::cpu::swav_cross_entropy {
namespace {

using at::Tensor;

// The row kernels of this process's instruction set (isa.h).
const Kernels& kernels() {
  static const Kernels& table = select_kernels(&kernels_avx512, &kernels_avx2, &kernels_default);
  return table;
}

// The op-level contract (op_checks.h) on CPU tensors.
void check_operands(const Tensor& scores, const Tensor& codes, double temperature) {
  check_xent_operands(scores, codes, temperature);
  TORCH_CHECK(scores.device().is_cpu() && codes.device().is_cpu(),
              "swav_cross_entropy (CPU): scores and codes must be CPU tensors");
}

Problem make_problem(const Tensor& scores, const Tensor& codes, double temperature) {
  return {scores.const_data_ptr(), scores.scalar_type(), codes.const_data_ptr(),
          codes.scalar_type(),     scores.size(0),       codes.size(0),
          scores.size(1),          scores.size(2),       temperature};
}

// Samples per task: enough that one task touches ~64k elements (amortizes the scratch
// buffers and the scheduling) and small batches still split across threads.
int64_t grain(const Problem& p) { return std::max<int64_t>(1, (int64_t{1} << 16) / (p.V * p.K)); }

std::tuple<Tensor, Tensor> forward_cpu(const Tensor& scores_in, const Tensor& codes_in,
                                       double temperature) {
  check_operands(scores_in, codes_in, temperature);
  const Tensor scores = scores_in.contiguous(), codes = codes_in.contiguous();
  const Problem p = make_problem(scores, codes, temperature);
  const auto loss_type = acc_dtype(scores.scalar_type());  // numeric.h
  Tensor lse = at::empty({p.V, p.B}, scores.options().dtype(at::kDouble));
  std::vector<double> terms(p.B);
  const Kernels& k = kernels();
  void* lse_ptr = lse.data_ptr();
  at::parallel_for(0, p.B, grain(p),
                   [&](int64_t b0, int64_t b1) { k.forward(p, lse_ptr, terms.data(), b0, b1); });
  double total = 0.0;
  for (const double t : terms) total += t;  // index order: same bits for any thread count
  const double norm =
      static_cast<double>(p.A) * static_cast<double>(p.V - 1) * static_cast<double>(p.B);
  Tensor loss = at::scalar_tensor(total / norm, scores.options().dtype(loss_type));
  return {loss, lse};
}

Tensor backward_cpu(const Tensor& grad_loss, const Tensor& scores_in, const Tensor& codes_in,
                    const Tensor& lse_in, double temperature) {
  check_operands(scores_in, codes_in, temperature);
  const Tensor scores = scores_in.contiguous(), codes = codes_in.contiguous();
  const Problem p = make_problem(scores, codes, temperature);
  check_xent_backward(grad_loss, lse_in, p.V, p.B);  // op_checks.h
  const Tensor lse = lse_in.to(at::kDouble).contiguous();
  const double norm =
      static_cast<double>(p.A) * static_cast<double>(p.V - 1) * static_cast<double>(p.B);
  const double scale = grad_loss.item<double>() / (temperature * norm);
  Tensor grad = at::empty(scores.sizes(), scores.options());
  const Kernels& k = kernels();
  const void* lse_ptr = lse.const_data_ptr();
  void* grad_ptr = grad.data_ptr();
  at::parallel_for(0, p.B, grain(p), [&](int64_t b0, int64_t b1) {
    k.backward(p, lse_ptr, scale, grad_ptr, b0, b1);
  });
  return grad;
}

}  // namespace
}  // namespace seer_kernels::cpu::swav_cross_entropy

TORCH_LIBRARY_IMPL(seer_kernels, CPU, m) {
  m.impl("swav_cross_entropy", &seer_kernels::cpu::swav_cross_entropy::forward_cpu);
  m.impl("swav_cross_entropy_backward", &seer_kernels::cpu::swav_cross_entropy::backward_cpu);
}

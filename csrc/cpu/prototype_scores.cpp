// Cosine prototype scores on the CPU: scores = normalize(E) @ normalize(P)^T, E (N, D),
// P (K, D), row-wise L2 normalization x / max(||x||, 1e-12) (F.normalize's eps).
//
// Forward: one fused pass per operand row computes the inverse norm rn = 1/max(||x||, eps)
// (fp32; fp64 for fp64 input) and writes the normalized row x * rn; then one GEMM.
// Why normalize the small operands first instead of scaling the GEMM's output: MKL/oneDNN
// GEMMs have no epilogue hook, so scaling afterwards is a separate pass over the (N, K)
// scores, while normalizing first writes only (N + K) * D elements. At (N, D, K) =
// (2048, 128, 3000) that is 0.65 M elements (2.6 MB fp32) against 6.1 M (49 MB fp32 read +
// write for the epilogue pass); at (512, 256, 16384) 4.3 M against 8.4 M (67 MB).
//   bytes: read (N + K) D s + write (N + K) D g for the norms, then the GEMM (reads the
//   normalized operands, writes N K s); s = input element size, g = GEMM element size.
//   FLOPs: 2 N K D (GEMM) + 3 (N + K) D.
// GEMM dtype: the input's, except fp16, which runs as fp32 (ATen's fp16 CPU GEMM measured
// 5-10x slower than MKL sgemm here) with one rounding of the scores at the end; bf16 uses
// oneDNN's bf16 GEMM (fp32 accumulation). Scores come back in the input dtype.
//
// Backward, with x_hat = x * rn (recomputed from the saved rn: (N + K) D, no norms again):
//   d_E_hat = G @ P_hat (N, D), d_P_hat = G^T @ E_hat (K, D)   (two GEMMs, 4 N K D FLOPs)
// then one fused pass per row projects out the radial part (the exact gradient of
// y = x / max(||x||, eps)):
//   ||x|| >= eps: y = x / ||x||, dy/dx = (I - y y^T) / ||x||  ->  d_x = rn (d_y - y <y, d_y>)
//   ||x|| <  eps: y = x / eps,  dy/dx = I / eps                 ->  d_x = rn d_y
// (at ||x|| == eps the clamp passes the gradient to the norm, as torch's clamp_min does).
// The projection pass re-reads x and recomputes ||x||^2 with the dot <x, d_y> in the same
// loop, so the branch is taken on the norm, not guessed from rn; these row scalars and the
// update run in fp64 (exact products of fp32 values), written as
//   d_x = rn (d_y - x <x, d_y> / ||x||^2),
// which cancels exactly where d_y is parallel to x (there rn^2-based fp32 arithmetic
// leaves a few ulp of |d_y| rn where the true gradient is ~0, e.g. every row at D = 1).
//   bytes: read G (N K s) twice in the GEMMs, (N + K) D for x, x_hat, d_y and d_x.
// normalize=false: plain product and plain GEMM gradients; the rnorms are ones.
//
// This file holds the tensor side (checks, GEMMs, threading); the two row passes are in
// prototype_scores_kernels_impl.h, compiled per instruction set (isa.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include "../numeric.h"
#include "../op_checks.h"
#include "grain.h"
#include "isa.h"
#include "prototype_scores_kernels.h"

namespace seer_kernels::cpu::prototype_scores {
namespace {

using at::Tensor;

// acc_type / acc_dtype (fp32; fp64 for fp64 input): csrc/numeric.h; gemm_type /
// gemm_dtype: prototype_scores_kernels.h.

// The row kernels of this process's instruction set (isa.h).
const Kernels& kernels() {
  static const Kernels& table = select_kernels(&kernels_avx512, &kernels_avx2, &kernels_default);
  return table;
}

// The pass over e and p (typed pointer accessors check the dtypes).
template <typename scalar_t>
RowPass row_pass(const Tensor& e, const Tensor& p, const Tensor& rn_e, const Tensor& rn_p) {
  RowPass pass;
  pass.dtype = e.scalar_type();
  pass.rows[0] = e.size(0);
  pass.rows[1] = p.size(0);
  pass.d = e.size(1);
  pass.x[0] = e.const_data_ptr<scalar_t>();
  pass.x[1] = p.const_data_ptr<scalar_t>();
  pass.rn[0] = rn_e.data_ptr<acc_type<scalar_t>>();
  pass.rn[1] = rn_p.data_ptr<acc_type<scalar_t>>();
  return pass;
}

void check_operands(const Tensor& e, const Tensor& p) {
  check_prototype_operands(e, p);  // op_checks.h
}

// Normalized copies of e and p in the GEMM dtype; fills rn_e, rn_p when compute_rn.
std::pair<Tensor, Tensor> normalized(const Tensor& e, const Tensor& p, const Tensor& rn_e,
                                     const Tensor& rn_p, bool compute_rn) {
  const Kernels& k = kernels();
  const auto options = e.options().dtype(gemm_dtype(e.scalar_type()));
  Tensor e_hat = at::empty(e.sizes(), options);
  Tensor p_hat = at::empty(p.sizes(), options);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, e.scalar_type(), "prototype_scores_normalize", [&] {
        using gemm_t = gemm_type<scalar_t>;
        auto pass = row_pass<scalar_t>(e, p, rn_e, rn_p);
        pass.compute_rn = compute_rn;
        pass.x_hat[0] = e_hat.mutable_data_ptr<gemm_t>();
        pass.x_hat[1] = p_hat.mutable_data_ptr<gemm_t>();
        at::parallel_for(0, pass.rows[0] + pass.rows[1], row_grain(pass.d),
                         [&](int64_t begin, int64_t end) { k.normalize_rows(pass, begin, end); });
      });
  return {e_hat, p_hat};
}

// Input-dtype gradients of e and p from d_e_hat, d_p_hat (GEMM dtype); in place when the
// dtypes agree.
std::pair<Tensor, Tensor> projected(const Tensor& d_e_hat, const Tensor& d_p_hat, const Tensor& e,
                                    const Tensor& p, const Tensor& rn_e, const Tensor& rn_p) {
  const Kernels& k = kernels();
  const bool in_place = d_e_hat.scalar_type() == e.scalar_type();
  Tensor d_e = in_place ? d_e_hat : at::empty(e.sizes(), e.options());
  Tensor d_p = in_place ? d_p_hat : at::empty(p.sizes(), p.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, e.scalar_type(), "prototype_scores_project", [&] {
        using gemm_t = gemm_type<scalar_t>;
        auto pass = row_pass<scalar_t>(e, p, rn_e, rn_p);
        pass.d_hat[0] = d_e_hat.const_data_ptr<gemm_t>();
        pass.d_hat[1] = d_p_hat.const_data_ptr<gemm_t>();
        pass.d_x[0] = d_e.mutable_data_ptr<scalar_t>();
        pass.d_x[1] = d_p.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, pass.rows[0] + pass.rows[1], row_grain(pass.d),
                         [&](int64_t begin, int64_t end) { k.project_rows(pass, begin, end); });
      });
  return {d_e, d_p};
}

std::tuple<Tensor, Tensor, Tensor> prototype_scores_cpu(const Tensor& embeddings,
                                                        const Tensor& prototypes, bool normalize) {
  check_operands(embeddings, prototypes);
  const Tensor e = embeddings.contiguous();
  const Tensor p = prototypes.contiguous();
  const auto dtype = e.scalar_type();
  const auto rn_options = e.options().dtype(acc_dtype(dtype));
  Tensor rn_e = at::empty({e.size(0)}, rn_options);
  Tensor rn_p = at::empty({p.size(0)}, rn_options);
  Tensor e_hat, p_hat;
  if (normalize) {
    std::tie(e_hat, p_hat) = normalized(e, p, rn_e, rn_p, /*compute_rn=*/true);
  } else {
    rn_e.fill_(1);
    rn_p.fill_(1);
    e_hat = e.to(gemm_dtype(dtype));
    p_hat = p.to(gemm_dtype(dtype));
  }
  return {at::mm(e_hat, p_hat.t()).to(dtype), rn_e, rn_p};
}

std::tuple<Tensor, Tensor> prototype_scores_backward_cpu(
    const Tensor& grad, const Tensor& embeddings, const Tensor& prototypes,
    const Tensor& embeddings_rnorm, const Tensor& prototypes_rnorm, bool normalize) {
  check_operands(embeddings, prototypes);
  check_prototype_grad(grad, embeddings, prototypes);
  const Tensor e = embeddings.contiguous();
  const Tensor p = prototypes.contiguous();
  const auto dtype = e.scalar_type();
  // at::mm copes with any strides of grad (including the stride-0 grad of a sum).
  const Tensor g = grad.to(gemm_dtype(dtype));
  if (!normalize) {
    const Tensor e_g = e.to(gemm_dtype(dtype));
    const Tensor p_g = p.to(gemm_dtype(dtype));
    return {at::mm(g, p_g).to(dtype), at::mm(g.t(), e_g).to(dtype)};
  }
  check_prototype_rnorm(embeddings_rnorm, e, "embeddings_rnorm");  // op_checks.h
  check_prototype_rnorm(prototypes_rnorm, p, "prototypes_rnorm");
  const Tensor rn_e = embeddings_rnorm.contiguous();
  const Tensor rn_p = prototypes_rnorm.contiguous();
  const auto [e_hat, p_hat] = normalized(e, p, rn_e, rn_p, /*compute_rn=*/false);
  return projected(at::mm(g, p_hat), at::mm(g.t(), e_hat), e, p, rn_e, rn_p);
}

}  // namespace

TORCH_LIBRARY_IMPL(seer_kernels, CPU, m) {
  m.impl("prototype_scores", &prototype_scores_cpu);
  m.impl("prototype_scores_backward", &prototype_scores_backward_cpu);
}

}  // namespace seer_kernels::cpu::prototype_scores

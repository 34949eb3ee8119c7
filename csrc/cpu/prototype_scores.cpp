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
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>  // at::vec::convert (fp16 rows to fp32 and back)
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../numeric.h"
#include "../op_checks.h"

namespace seer_kernels::cpu::prototype_scores {
namespace {

using at::Tensor;

// acc_type / acc_dtype (fp32; fp64 for fp64 input): csrc/numeric.h.
// GEMM element type (see the header): fp32 for fp16, the input type otherwise.
template <typename scalar_t>
using gemm_type = std::conditional_t<std::is_same_v<scalar_t, at::Half>, float, scalar_t>;

at::ScalarType gemm_dtype(at::ScalarType t) { return t == at::kHalf ? at::kFloat : t; }

template <typename acc_t>
constexpr acc_t kEps = static_cast<acc_t>(1e-12);

// The row loops below are compiled for x86-64-v4 (AVX-512), v3 (AVX2 + FMA) and the
// baseline, and the loader picks one (GCC function multiversioning; one indirect call per
// row and loop): the extension itself is built for the baseline ISA.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SEER_ROW_KERNEL \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SEER_ROW_KERNEL
#endif

// Element conversions. bf16 <-> fp32 as bit operations (round to nearest even, any NaN
// to 0x7FC0, exactly c10::BFloat16's rounding) in loops GCC vectorizes; the generic
// at::vec::convert does one scalar c10 conversion per element (measured 2x slower for
// the bf16 normalization pass). Other pairs go through at::vec::convert.
template <typename src_t, typename dst_t>
SEER_ROW_KERNEL void convert_row(const src_t* src, dst_t* dst, int64_t n) {
  if constexpr (std::is_same_v<src_t, at::BFloat16> && std::is_same_v<dst_t, float>) {
    const auto* bits = reinterpret_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u = static_cast<uint32_t>(bits[i]) << 16;
      std::memcpy(dst + i, &u, sizeof(u));
    }
  } else if constexpr (std::is_same_v<src_t, float> && std::is_same_v<dst_t, at::BFloat16>) {
    auto* bits = reinterpret_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) {
      uint32_t u;
      std::memcpy(&u, src + i, sizeof(u));
      const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
      bits[i] = (u & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
    }
  } else {
    at::vec::convert(src, dst, n);
  }
}

// The row as acc_t: the row itself when no conversion is needed, else converted into buf.
template <typename src_t, typename acc_t>
const acc_t* as_acc(const src_t* row, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<src_t, acc_t>) {
    return row;
  } else {
    convert_row(row, buf, n);
    return buf;
  }
}

// Where to compute an output row: in place when it has the accumulation type, else in
// buf (then converted by store_row).
template <typename out_t, typename acc_t>
acc_t* out_or_buf(out_t* row, acc_t* buf) {
  if constexpr (std::is_same_v<out_t, acc_t>) {
    return row;
  } else {
    return buf;
  }
}

template <typename out_t, typename acc_t>
void store_row(const acc_t* computed, out_t* row, int64_t n) {
  if constexpr (!std::is_same_v<out_t, acc_t>) {
    convert_row(computed, row, n);
  }
}

// Row loops are plain loops over kLanes independent partial sums, which GCC vectorizes
// (for each ISA of SEER_ROW_KERNEL above). ATen's Vectorized<float> would compile here to
// its generic array fallback (the extension is built without CPU_CAPABILITY flags):
// measured ~3x slower than these loops for the (16384, 256) normalization pass.
constexpr int kLanes = 16;

// <x, x> in the accumulation type.
template <typename acc_t>
SEER_ROW_KERNEL acc_t sum_squares(const acc_t* x, int64_t n) {
  acc_t part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      part[k] += x[i + k] * x[i + k];
    }
  }
  acc_t s = 0;
  for (int k = 0; k < kLanes; ++k) {
    s += part[k];
  }
  for (; i < n; ++i) {
    s += x[i] * x[i];
  }
  return s;
}

// out[i] = x[i] * s.
template <typename acc_t>
SEER_ROW_KERNEL void scale(const acc_t* x, acc_t s, acc_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = x[i] * s;
  }
}

// ||x||^2 and <x, d> in fp64 (kLanes partial sums each): products of fp32
// values are exact in fp64, so the projection below cancels exactly where d is parallel
// to x (D = 1: the true gradient is 0; fp32 row scalars leave a few ulp of |d| rn).
template <typename acc_t>
SEER_ROW_KERNEL std::pair<double, double> sumsq_and_dot_f64(const acc_t* x, const acc_t* d,
                                                            int64_t n) {
  double ss[kLanes] = {}, dot[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const double xv = x[i + k];
      ss[k] += xv * xv;
      dot[k] += xv * static_cast<double>(d[i + k]);
    }
  }
  double s = 0, t = 0;
  for (int k = 0; k < kLanes; ++k) {
    s += ss[k];
    t += dot[k];
  }
  for (; i < n; ++i) {
    s += static_cast<double>(x[i]) * x[i];
    t += static_cast<double>(x[i]) * d[i];
  }
  return {s, t};
}

// out[i] = rn (d[i] - x[i] c), evaluated in fp64 and rounded once.
template <typename acc_t>
SEER_ROW_KERNEL void project(const acc_t* d, const acc_t* x, double rn, double c, acc_t* out,
                             int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<acc_t>(rn * (static_cast<double>(d[i]) - static_cast<double>(x[i]) * c));
  }
}

int64_t row_grain(int64_t d) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(d, 1));
}

// x_hat = x * rn for one row. compute_rn: first rn = 1/max(||x||, eps) (forward); else the
// saved rn (backward). buf: 2 d scratch values of the accumulation type.
template <typename scalar_t>
void normalize_row(const scalar_t* x, int64_t d, acc_type<scalar_t>& rn, gemm_type<scalar_t>* x_hat,
                   bool compute_rn, acc_type<scalar_t>* buf) {
  using acc_t = acc_type<scalar_t>;
  const acc_t* xr = as_acc(x, d, buf);
  if (compute_rn) {
    rn = acc_t(1) / std::max(std::sqrt(sum_squares(xr, d)), kEps<acc_t>);
  }
  acc_t* out = out_or_buf(x_hat, buf + d);
  scale(xr, rn, out, d);
  store_row(out, x_hat, d);
}

// d_x = rn (d_y - x_hat <x_hat, d_y>) (||x|| >= eps) or rn d_y (||x|| < eps) for one row.
// d_y has the GEMM type, d_x the input type (may alias d_y when the types agree).
// buf: 3 d scratch values of the accumulation type.
template <typename scalar_t>
void project_row(const gemm_type<scalar_t>* d_y, const scalar_t* x, acc_type<scalar_t> rn,
                 int64_t d, scalar_t* d_x, acc_type<scalar_t>* buf) {
  using acc_t = acc_type<scalar_t>;
  const acc_t* xr = as_acc(x, d, buf);
  const acc_t* dr = as_acc(d_y, d, buf + d);
  const auto [ss, dot] = sumsq_and_dot_f64(xr, dr, d);
  // x_hat <x_hat, d_y> = x <x, d_y> / ||x||^2 (no rounding of rn^2); 0 where clamped.
  const double c = std::sqrt(ss) >= 1e-12 ? dot / ss : 0.0;
  acc_t* out = out_or_buf(d_x, buf + 2 * d);
  project(dr, xr, rn, c, out, d);
  store_row(out, d_x, d);
}

// Both operands of a row pass as raw pointers (index 0: embeddings, 1: prototypes), so
// that one parallel region (one fork/join) covers both.
template <typename scalar_t>
struct RowPass {
  int64_t rows[2] = {0, 0};
  int64_t d = 0;
  const scalar_t* x[2] = {nullptr, nullptr};
  acc_type<scalar_t>* rn[2] = {nullptr, nullptr};  // written when compute_rn, else read
  bool compute_rn = false;
  gemm_type<scalar_t>* x_hat[2] = {nullptr, nullptr};        // normalize: output
  const gemm_type<scalar_t>* d_hat[2] = {nullptr, nullptr};  // project: input
  scalar_t* d_x[2] = {nullptr, nullptr};                     // project: output
};

template <typename scalar_t>
void normalize_chunk(const RowPass<scalar_t>& pass, int64_t begin, int64_t end) {
  const int64_t d = pass.d;
  std::vector<acc_type<scalar_t>> buf(2 * d);
  for (int64_t i = begin; i < end; ++i) {
    const int op = i < pass.rows[0] ? 0 : 1;
    const int64_t r = i - op * pass.rows[0];
    normalize_row<scalar_t>(pass.x[op] + r * d, d, pass.rn[op][r], pass.x_hat[op] + r * d,
                            pass.compute_rn, buf.data());
  }
}

template <typename scalar_t>
void project_chunk(const RowPass<scalar_t>& pass, int64_t begin, int64_t end) {
  const int64_t d = pass.d;
  std::vector<acc_type<scalar_t>> buf(3 * d);
  for (int64_t i = begin; i < end; ++i) {
    const int op = i < pass.rows[0] ? 0 : 1;
    const int64_t r = i - op * pass.rows[0];
    project_row<scalar_t>(pass.d_hat[op] + r * d, pass.x[op] + r * d, pass.rn[op][r], d,
                          pass.d_x[op] + r * d, buf.data());
  }
}

template <typename scalar_t>
RowPass<scalar_t> row_pass(const Tensor& e, const Tensor& p, const Tensor& rn_e,
                           const Tensor& rn_p) {
  RowPass<scalar_t> pass;
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

void check_rnorm(const Tensor& rn, const Tensor& x, const char* name) {
  TORCH_CHECK(rn.dim() == 1 && rn.size(0) == x.size(0), "prototype_scores_backward: ", name,
              " must have one entry per row");
  TORCH_CHECK(rn.scalar_type() == acc_dtype(x.scalar_type()), "prototype_scores_backward: ", name,
              " must be ", acc_dtype(x.scalar_type()));
}

// Normalized copies of e and p in the GEMM dtype; fills rn_e, rn_p when compute_rn.
std::pair<Tensor, Tensor> normalized(const Tensor& e, const Tensor& p, const Tensor& rn_e,
                                     const Tensor& rn_p, bool compute_rn) {
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
                         [&](int64_t begin, int64_t end) { normalize_chunk(pass, begin, end); });
      });
  return {e_hat, p_hat};
}

// Input-dtype gradients of e and p from d_e_hat, d_p_hat (GEMM dtype); in place when the
// dtypes agree.
std::pair<Tensor, Tensor> projected(const Tensor& d_e_hat, const Tensor& d_p_hat, const Tensor& e,
                                    const Tensor& p, const Tensor& rn_e, const Tensor& rn_p) {
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
                         [&](int64_t begin, int64_t end) { project_chunk(pass, begin, end); });
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
  check_rnorm(embeddings_rnorm, e, "embeddings_rnorm");
  check_rnorm(prototypes_rnorm, p, "prototypes_rnorm");
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

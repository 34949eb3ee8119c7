// SwAV multi-crop swapped-prediction cross-entropy, CUDA: the ops
// seer_kernels::swav_cross_entropy and seer_kernels::swav_cross_entropy_backward.
//
// Same algorithm and numerics as the CPU kernels (csrc/cpu/swav_cross_entropy_kernels_impl.h):
// with C_v[b] = sum_{a < A, a != v} codes[a, b] and R_v[b] = sum_k C_v[b, k],
//   lse_v[b]  = max_v[b] / T + log s,  s = sum_k exp((x_k - max) / T)      (kept, fp64)
//   term_v[b] = R_v[b] log s + <C_v[b], max - x> / T                       (the row's loss)
//   loss      = sum_{v, b} term_v[b] / (A (V - 1) B)
//   grad[v, b, k] = grad_loss (R_v[b] exp((x_k - L_hi - L_lo) / T) - C_v[b, k]) / (T A (V - 1) B)
// where L = T lse = L_hi + L_lo (two acc_t values: exact exponent near the row max).
//
// One block per row (v, b), blocks of one sample adjacent (blockIdx.x = b V + v) so the
// A code rows of sample b, read by its V blocks, are served from L2.
//   forward   pass 1 over the row: max; pass 2 (row re-read, from L1/L2): sum exp, the
//             gap dot with C_v and R_v. Writes lse and one partial per row; a second
//             kernel (one block) sums the V B partials in a fixed order: deterministic,
//             no floating-point atomics.
//   backward  pass 1 over the code rows: R_v; pass 2: the gradient row, written once.
// Bytes from HBM (e = element size), when the re-reads hit L2: forward V B K e_s +
// A B K e_c + 16 V B; backward 2 V B K e_s + A B K e_c + 8 V B. FLOPs per score element:
// ~ A + 6 and one exp, each way.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "../numeric.h"
#include "../op_checks.h"
#include "reduce.cuh"

namespace seer_kernels::cuda::swav_cross_entropy {
namespace {

using at::Tensor;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;

// C_v[k] for sample b: the code rows a != v, added in increasing a (as on the CPU).
template <typename code_t, typename acc_t>
__device__ __forceinline__ acc_t target_at(const code_t* codes, int64_t v, int64_t A, int64_t b,
                                           int64_t B, int64_t K, int64_t k) {
  acc_t c = 0;
  for (int64_t a = 0; a < A; ++a)
    if (a != v) c += static_cast<acc_t>(codes[(a * B + b) * K + k]);
  return c;
}

template <typename scalar_t, typename code_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_rows(const scalar_t* __restrict__ scores, const code_t* __restrict__ codes,
                 double* __restrict__ lse, double* __restrict__ terms, int64_t V, int64_t A,
                 int64_t B, int64_t K, double T) {
  __shared__ acc_t smem[kWarps];
  const int64_t v = blockIdx.x % V, b = blockIdx.x / V, row = v * B + b;
  const scalar_t* x = scores + row * K;
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t k = threadIdx.x; k < K; k += kThreads) m = MaxOp()(m, static_cast<acc_t>(x[k]));
  m = block_reduce<kWarps>(m, MaxOp(), -std::numeric_limits<acc_t>::infinity(), smem);

  const acc_t inv_t = static_cast<acc_t>(1.0 / T);
  acc_t s = 0, d = 0, r = 0;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    const acc_t gap = m - static_cast<acc_t>(x[k]);
    const acc_t c = target_at<code_t, acc_t>(codes, v, A, b, B, K, k);
    s += exp(-gap * inv_t);
    d += c * gap;
    r += c;
  }
  s = block_reduce<kWarps>(s, SumOp(), acc_t(0), smem);
  d = block_reduce<kWarps>(d, SumOp(), acc_t(0), smem);
  r = block_reduce<kWarps>(r, SumOp(), acc_t(0), smem);
  if (threadIdx.x == 0) {
    const double log_s = log(static_cast<double>(s));
    lse[row] = static_cast<double>(m) / T + log_s;
    terms[row] = static_cast<double>(r) * log_s + static_cast<double>(d) / T;
  }
}

// loss = sum of the n partials / norm, by one block: strided per-thread sums, then the
// fixed tree; the same bits on every run.
template <typename loss_t>
__global__ void __launch_bounds__(kThreads) finish_loss(const double* __restrict__ terms, int64_t n,
                                                        double norm, loss_t* __restrict__ loss) {
  __shared__ double smem[kWarps];
  double t = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) t += terms[i];
  t = block_reduce<kWarps>(t, SumOp(), 0.0, smem);
  if (threadIdx.x == 0) *loss = static_cast<loss_t>(t / norm);
}

template <typename scalar_t, typename code_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_rows(const acc_t* __restrict__ grad_loss, const scalar_t* __restrict__ scores,
                  const code_t* __restrict__ codes, const double* __restrict__ lse,
                  scalar_t* __restrict__ grad, int64_t V, int64_t A, int64_t B, int64_t K, double T,
                  double scale) {
  __shared__ acc_t smem[kWarps];
  const int64_t v = blockIdx.x % V, b = blockIdx.x / V, row = v * B + b;
  acc_t r = 0;
  for (int64_t k = threadIdx.x; k < K; k += kThreads)
    r += target_at<code_t, acc_t>(codes, v, A, b, B, K, k);
  r = block_reduce<kWarps>(r, SumOp(), acc_t(0), smem);

  const double L = lse[row] * T;
  const acc_t l_hi = static_cast<acc_t>(L);
  const acc_t l_lo = static_cast<acc_t>(L - static_cast<double>(l_hi));
  const acc_t inv_t = static_cast<acc_t>(1.0 / T);
  const acc_t g = *grad_loss * static_cast<acc_t>(scale);
  const scalar_t* x = scores + row * K;
  scalar_t* out = grad + row * K;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    const acc_t p = exp(((static_cast<acc_t>(x[k]) - l_hi) - l_lo) * inv_t);
    const acc_t c = target_at<code_t, acc_t>(codes, v, A, b, B, K, k);
    out[k] = static_cast<scalar_t>((r * p - c) * g);
  }
}

// The op-level contract (op_checks.h) on one CUDA device.
void check_operands(const Tensor& scores, const Tensor& codes, double temperature) {
  check_xent_operands(scores, codes, temperature);
  TORCH_CHECK(scores.is_cuda() && codes.device() == scores.device(),
              "swav_cross_entropy (CUDA): scores and codes must be on one CUDA device");
}

// Codes in the scores' dtype are read as they are; any other dtype is converted once to
// the accumulation type (Sinkhorn codes are fp32 already), which keeps the kernels to one
// instantiation per scores dtype and code layout.
Tensor codes_for(const Tensor& codes, const Tensor& scores) {
  if (codes.scalar_type() == scores.scalar_type()) return codes.contiguous();
  return codes.to(acc_dtype(scores.scalar_type())).contiguous();
}

// Calls f(scalar_t*, code_t*) with code_t = scalar_t or acc_t, as `codes_for` chose.
#define SEER_XENT_DISPATCH(SCORES, CODES, NAME, ...)                                          \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, SCORES.scalar_type(), NAME, [&] { \
    using acc_t = acc_type<scalar_t>;                                                         \
    if (CODES.scalar_type() == SCORES.scalar_type()) {                                        \
      using code_t = scalar_t;                                                                \
      __VA_ARGS__();                                                                          \
    } else {                                                                                  \
      using code_t = acc_t;                                                                   \
      __VA_ARGS__();                                                                          \
    }                                                                                         \
  })

std::tuple<Tensor, Tensor> forward_cuda(const Tensor& scores_in, const Tensor& codes_in,
                                        double temperature) {
  check_operands(scores_in, codes_in, temperature);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const Tensor scores = scores_in.contiguous(), codes = codes_for(codes_in, scores_in);
  const int64_t V = scores.size(0), B = scores.size(1), K = scores.size(2), A = codes.size(0);
  Tensor lse = at::empty({V, B}, scores.options().dtype(at::kDouble));
  Tensor terms = at::empty({V * B}, scores.options().dtype(at::kDouble));
  Tensor loss = at::empty({}, scores.options().dtype(acc_dtype(scores.scalar_type())));
  const double norm = static_cast<double>(A) * static_cast<double>(V - 1) * static_cast<double>(B);
  const auto stream = at::cuda::getCurrentCUDAStream();
  SEER_XENT_DISPATCH(scores, codes, "swav_cross_entropy_cuda", [&] {
    forward_rows<scalar_t, code_t, acc_t><<<V * B, kThreads, 0, stream>>>(
        scores.const_data_ptr<scalar_t>(), codes.const_data_ptr<code_t>(), lse.data_ptr<double>(),
        terms.data_ptr<double>(), V, A, B, K, temperature);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finish_loss<acc_t><<<1, kThreads, 0, stream>>>(terms.const_data_ptr<double>(), V * B, norm,
                                                   loss.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, lse};
}

Tensor backward_cuda(const Tensor& grad_loss, const Tensor& scores_in, const Tensor& codes_in,
                     const Tensor& lse_in, double temperature) {
  check_operands(scores_in, codes_in, temperature);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const Tensor scores = scores_in.contiguous(), codes = codes_for(codes_in, scores_in);
  const int64_t V = scores.size(0), B = scores.size(1), K = scores.size(2), A = codes.size(0);
  check_xent_backward(grad_loss, lse_in, V, B);  // op_checks.h
  const Tensor lse = lse_in.to(scores.device(), at::kDouble).contiguous();
  // The incoming gradient stays on the device (no host sync), in the accumulation type.
  const Tensor g =
      grad_loss.reshape({}).to(scores.device(), acc_dtype(scores.scalar_type())).contiguous();
  const double norm = static_cast<double>(A) * static_cast<double>(V - 1) * static_cast<double>(B);
  Tensor grad = at::empty(scores.sizes(), scores.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  SEER_XENT_DISPATCH(scores, codes, "swav_cross_entropy_backward_cuda", [&] {
    backward_rows<scalar_t, code_t, acc_t><<<V * B, kThreads, 0, stream>>>(
        g.const_data_ptr<acc_t>(), scores.const_data_ptr<scalar_t>(),
        codes.const_data_ptr<code_t>(), lse.const_data_ptr<double>(), grad.data_ptr<scalar_t>(), V,
        A, B, K, temperature, 1.0 / (temperature * norm));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace
}  // namespace seer_kernels::cuda::swav_cross_entropy

TORCH_LIBRARY_IMPL(seer_kernels, CUDA, m) {
  m.impl("swav_cross_entropy", &seer_kernels::cuda::swav_cross_entropy::forward_cuda);
  m.impl("swav_cross_entropy_backward", &seer_kernels::cuda::swav_cross_entropy::backward_cuda);
}

// Cosine prototype scores on CUDA: scores = normalize(E) @ normalize(P)^T, E (N, D),
// P (K, D), row-wise x / max(||x||, 1e-12). The same algorithm as the CPU kernels
// (csrc/cpu/prototype_scores.cpp); the GEMMs are cuBLAS through at::mm.
//
// Forward: one warp per row computes rn = 1/max(||x||, eps) (fp32; fp64 for fp64 input,
// warp-shuffle reduction) and writes x * rn in the input dtype; then one cuBLAS GEMM of
// the normalized operands (tensor cores for fp16/bf16, fp32 accumulation; fp32 follows
// torch's TF32 setting). Normalizing the operands first rather than scaling raw-product
// scores in an epilogue pass moves (N + K) D elements instead of N K twice, and the raw
// fp16 product can overflow (|e| |p| > 65504) where the cosine cannot.
//   bytes: read (N + K) D s, write (N + K) D s, GEMM reads them and writes N K s.
//   FLOPs: 2 N K D + 3 (N + K) D.
// Backward: x_hat recomputed from the saved rn (no norms), d_E_hat = G P_hat and
// d_P_hat = G^T E_hat by cuBLAS with fp32 output for fp16/bf16 (at::mm's out_dtype), so
// the projection below does not start from a rounded half-precision gradient; then one
// warp per row computes ||x||^2 and <x, d> in one pass (fp64: products of fp32 values are
// exact, so d parallel to x cancels exactly) and writes
//   d_x = rn (d - x <x, d> / ||x||^2)   if ||x|| >= eps,   rn d   otherwise
// (the exact gradient of x / max(||x||, eps); see the CPU file for the derivation).
//   bytes: G read by each GEMM (2 N K s), (N + K) D (3 s + 4 + 4) for the rest.
// normalize=false: plain GEMMs; the rnorms are ones.
// The build passes --use_fast_math: sqrt and division use the IEEE-rounded intrinsics so
// that rn is the correctly rounded 1/max(sqrt(ss), eps), as on the CPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../numeric.h"
#include "../op_checks.h"
#include "reduce.cuh"

namespace seer_kernels::cuda::prototype_scores {
namespace {

using at::Tensor;

constexpr int kWarp = kWarpSize;
constexpr int kRowsPerBlock = 8;  // one warp per row, 256 threads per block
constexpr double kEps = 1e-12;

__device__ __forceinline__ float sqrt_rn(float x) { return __fsqrt_rn(x); }
__device__ __forceinline__ double sqrt_rn(double x) { return __dsqrt_rn(x); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

// x_hat = x * rn, one warp per row. compute_rn: rn = 1/max(||x||, eps) is computed and
// stored first (forward); otherwise the saved rn is read (backward).
template <typename scalar_t, typename acc_t>
__global__ void normalize_rows_kernel(const scalar_t* __restrict__ x, int64_t m, int64_t d,
                                      acc_t* __restrict__ rn, scalar_t* __restrict__ x_hat,
                                      bool compute_rn) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= m) {
    return;
  }
  const scalar_t* xr = x + row * d;
  acc_t scale;
  if (compute_rn) {
    acc_t ss = 0;
    for (int64_t j = lane; j < d; j += kWarp) {
      const acc_t v = static_cast<acc_t>(xr[j]);
      ss += v * v;
    }
    ss = warp_sum(ss);
    scale = div_rn(acc_t(1), max(sqrt_rn(ss), static_cast<acc_t>(kEps)));
    if (lane == 0) {
      rn[row] = scale;
    }
  } else {
    scale = rn[row];
  }
  for (int64_t j = lane; j < d; j += kWarp) {
    x_hat[row * d + j] = static_cast<scalar_t>(static_cast<acc_t>(xr[j]) * scale);
  }
}

// d_x = rn (d_y - x <x, d_y> / ||x||^2) where ||x|| >= eps, rn d_y where clamped; one warp per row.
template <typename scalar_t, typename acc_t>
__global__ void project_rows_kernel(const acc_t* __restrict__ d_y, const scalar_t* __restrict__ x,
                                    const acc_t* __restrict__ rn, int64_t m, int64_t d,
                                    scalar_t* __restrict__ d_x) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= m) {
    return;
  }
  const scalar_t* xr = x + row * d;
  const acc_t* dr = d_y + row * d;
  // Row scalars and update in fp64 (exact products of fp32 values; see the header).
  double ss = 0, dot = 0;
  for (int64_t j = lane; j < d; j += kWarp) {
    const double v = static_cast<double>(static_cast<acc_t>(xr[j]));
    ss += v * v;
    dot += v * static_cast<double>(dr[j]);
  }
  ss = warp_sum(ss);
  dot = warp_sum(dot);
  const double r = static_cast<double>(rn[row]);
  const double c = __dsqrt_rn(ss) >= kEps ? __ddiv_rn(dot, ss) : 0.0;
  for (int64_t j = lane; j < d; j += kWarp) {
    const double v = static_cast<double>(static_cast<acc_t>(xr[j]));
    d_x[row * d + j] = static_cast<scalar_t>(r * (static_cast<double>(dr[j]) - v * c));
  }
}

unsigned int row_blocks(int64_t m) {
  return static_cast<unsigned int>((m + kRowsPerBlock - 1) / kRowsPerBlock);
}

void check_operands(const Tensor& e, const Tensor& p) {
  check_prototype_operands(e, p);  // op_checks.h
  TORCH_CHECK(e.is_cuda() && p.device() == e.device(),
              "prototype_scores: inputs must be on one CUDA device");
}

// Normalized copy of x (input dtype); fills rn when compute_rn, else reads it.
Tensor normalized(const Tensor& x, const Tensor& rn, bool compute_rn) {
  Tensor x_hat = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.size(0) == 0) {
    return x_hat;
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "prototype_scores_normalize", [&] {
        using acc_t = acc_type<scalar_t>;
        normalize_rows_kernel<scalar_t, acc_t>
            <<<row_blocks(x.size(0)), kWarp * kRowsPerBlock, 0, stream>>>(
                x.const_data_ptr<scalar_t>(), x.size(0), x.size(1), rn.data_ptr<acc_t>(),
                x_hat.mutable_data_ptr<scalar_t>(), compute_rn);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return x_hat;
}

// a @ b with an fp32 result for fp16/bf16 operands (the projection's input).
Tensor mm_acc(const Tensor& a, const Tensor& b) {
  const auto t = a.scalar_type();
  return (t == at::kHalf || t == at::kBFloat16) ? at::mm(a, b, at::kFloat) : at::mm(a, b);
}

Tensor projected(const Tensor& d_y, const Tensor& x, const Tensor& rn) {
  Tensor d_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.size(0) == 0) {
    return d_x;
  }
  const Tensor d = d_y.contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "prototype_scores_project", [&] {
        using acc_t = acc_type<scalar_t>;
        project_rows_kernel<scalar_t, acc_t>
            <<<row_blocks(x.size(0)), kWarp * kRowsPerBlock, 0, stream>>>(
                d.const_data_ptr<acc_t>(), x.const_data_ptr<scalar_t>(), rn.const_data_ptr<acc_t>(),
                x.size(0), x.size(1), d_x.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return d_x;
}

std::tuple<Tensor, Tensor, Tensor> prototype_scores_cuda(const Tensor& embeddings,
                                                         const Tensor& prototypes, bool normalize) {
  check_operands(embeddings, prototypes);
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const Tensor e = embeddings.contiguous();
  const Tensor p = prototypes.contiguous();
  const auto rn_options = e.options().dtype(acc_dtype(e.scalar_type()));
  Tensor rn_e = at::empty({e.size(0)}, rn_options);
  Tensor rn_p = at::empty({p.size(0)}, rn_options);
  if (!normalize) {
    rn_e.fill_(1);
    rn_p.fill_(1);
    return {at::mm(e, p.t()), rn_e, rn_p};
  }
  const Tensor e_hat = normalized(e, rn_e, /*compute_rn=*/true);
  const Tensor p_hat = normalized(p, rn_p, /*compute_rn=*/true);
  return {at::mm(e_hat, p_hat.t()), rn_e, rn_p};
}

std::tuple<Tensor, Tensor> prototype_scores_backward_cuda(
    const Tensor& grad, const Tensor& embeddings, const Tensor& prototypes,
    const Tensor& embeddings_rnorm, const Tensor& prototypes_rnorm, bool normalize) {
  check_operands(embeddings, prototypes);
  check_prototype_grad(grad, embeddings, prototypes);
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const Tensor e = embeddings.contiguous();
  const Tensor p = prototypes.contiguous();
  const Tensor g = grad.to(e.scalar_type());  // cuBLAS copes with g's strides
  if (!normalize) {
    return {at::mm(g, p), at::mm(g.t(), e)};
  }
  check_prototype_rnorm(embeddings_rnorm, e, "embeddings_rnorm");  // op_checks.h
  check_prototype_rnorm(prototypes_rnorm, p, "prototypes_rnorm");
  const Tensor rn_e = embeddings_rnorm.contiguous();
  const Tensor rn_p = prototypes_rnorm.contiguous();
  const Tensor e_hat = normalized(e, rn_e, /*compute_rn=*/false);
  const Tensor p_hat = normalized(p, rn_p, /*compute_rn=*/false);
  return {projected(mm_acc(g, p_hat), e, rn_e), projected(mm_acc(g.t(), e_hat), p, rn_p)};
}

}  // namespace

TORCH_LIBRARY_IMPL(seer_kernels, CUDA, m) {
  m.impl("prototype_scores", &prototype_scores_cuda);
  m.impl("prototype_scores_backward", &prototype_scores_backward_cuda);
}

}  // namespace seer_kernels::cuda::prototype_scores

// CUDA kernels of seer_kernels::sinkhorn, sinkhorn_colstats and sinkhorn_codes. The same
// algorithm and the same shift conventions as csrc/cpu/sinkhorn.cpp (read it first):
//   pass 0      log_u = -logsumexp_b L[:, k] - log K                (plain colstats)
//   pass t      log_u += log(B/K) - logsumexp_b log_softmax_k(L + log_u)   (normalized)
//   last pass   codes = softmax_k(L + log_u);  T = 0: codes = B * exp(L - logsumexp(L))
// Statistics are (shift, sum of exp(x - shift)) pairs with a finite shift (the running
// max, 0 where it is not finite), so nothing over- or underflows at any eps.
//
// Kernels per pass (all on the current stream; the fused op never syncs with the host):
//   plain_colstats        grid (row groups G, column tiles of 256): one thread per column
//                         walks the group's rows with an online max/sum (one exp per
//                         element; a second only when the max moves). Reads B*K*s bytes,
//                         writes G*2*K floats.
//   normalized_colstats   grid (G): a block takes 4 rows at a time, reduces their row
//                         logsumexps (online, warp shuffles + shared memory), then adds
//                         their softmax to its private accumulator row in the workspace.
//                         Reads B*K*s bytes from DRAM (the second look at the 4 rows hits
//                         L1/L2: 4*K*s bytes per block), writes G*2*K floats.
//   merge                 grid (K / 256): combines the G partials per column (fp64 sum)
//                         and applies the log_u update. Reads G*2*K floats, writes K.
//   codes                 grid (B): a block per row, online row logsumexp, then writes
//                         the softmax (second look at the row from L1). Reads B*K*s,
//                         writes B*K*4 bytes.
// (4096, 3000, 3) fp32: 4 * 49.2 MB read + 49.2 MB written, plus ~1 MB of partials.
//
// Accuracy: x / eps is __fdiv_rn (the build uses --use_fast_math, which would make `/`
// approximate); exp is __expf, whose error is relative to |argument| * 2^-22: every
// argument here is <= 0 after the shift and the terms that matter have small arguments,
// so the absolute error of codes and sums stays at fp32 rounding.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../op_checks.h"
#include "../sinkhorn_merge.h"
#include "reduce.cuh"

namespace seer_kernels::cuda::sinkhorn {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBatch = 4;  // rows whose logsumexps one normalized block reduces together

__device__ __forceinline__ float finite_or_zero(float m) { return isfinite(m) ? m : 0.f; }

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename T>
__device__ __forceinline__ float logit(const T* scores, int64_t row, int64_t col, int64_t cols,
                                       float eps, float log_u) {
  return __fdiv_rn(static_cast<float>(scores[row * cols + col]), eps) + log_u;
}

// s = sum exp(. - finite_or_zero(m)) rescaled to sum exp(. - shift). An empty sum
// (m = -inf) stays 0: exp(0 - shift) overflows once shift < -88, and 0 * inf is NaN.
__device__ __forceinline__ float rescale(float s, float m, float shift) {
  return s == 0.f ? s : s * __expf(finite_or_zero(m) - shift);
}

// (m, s) <- (max(m, z), sum of exp(. - shift)) with the shift of the new max.
__device__ __forceinline__ void online_add(float& m, float& s, float z) {
  if (z > m) {
    s = rescale(s, m, finite_or_zero(z));
    m = z;
  }
  s += __expf(z - finite_or_zero(m));  // NaN z: the comparison is false and s becomes NaN
}

__device__ __forceinline__ void online_merge(float& m, float& s, float m2, float s2) {
  const float mx = fmaxf(m, m2);  // ignores NaN; the sums carry it
  const float shift = finite_or_zero(mx);
  s = rescale(s, m, shift) + rescale(s2, m2, shift);
  m = mx;
}

// Block-wide online (max, sum) of R independent rows (the pair version of reduce.cuh's
// block_reduce, R rows sharing each barrier); every thread gets the same results.
template <int R>
__device__ void block_reduce(float (&m)[R], float (&s)[R]) {
  __shared__ float shared_m[R][32];
  __shared__ float shared_s[R][32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    warp_reduce_pair(m[i], s[i],
                     [](float& a, float& b, float a2, float b2) { online_merge(a, b, a2, b2); });
    if (lane == 0) {
      shared_m[i][warp] = m[i];
      shared_s[i][warp] = s[i];
    }
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < R; ++i) {
    m[i] = shared_m[i][0];
    s[i] = shared_s[i][0];
    for (int w = 1; w < warps; ++w) online_merge(m[i], s[i], shared_m[i][w], shared_s[i][w]);
  }
  __syncthreads();  // the shared arrays are reused by the next call
}

template <typename T>
__global__ void plain_colstats_kernel(const T* __restrict__ scores, const float* __restrict__ log_u,
                                      float* __restrict__ partial, int64_t rows, int64_t cols,
                                      int64_t rows_per_group, float eps) {
  const int64_t col = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  const int64_t row0 = int64_t(blockIdx.x) * rows_per_group;
  const int64_t row_end = imin(row0 + rows_per_group, rows);
  const float lu = log_u[col];
  float m = -INFINITY;
  float s = 0.f;
  int64_t r = row0;
  for (; r + 4 <= row_end; r += 4) {  // four independent loads in flight per thread
    float z[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) z[i] = logit(scores, r + i, col, cols, eps, lu);
#pragma unroll
    for (int i = 0; i < 4; ++i) online_add(m, s, z[i]);
  }
  for (; r < row_end; ++r) online_add(m, s, logit(scores, r, col, cols, eps, lu));
  float* out = partial + int64_t(blockIdx.x) * 2 * cols;
  out[col] = finite_or_zero(m);
  out[cols + col] = s;
}

template <typename T>
__global__ void normalized_colstats_kernel(const T* __restrict__ scores,
                                           const float* __restrict__ log_u,
                                           float* __restrict__ partial, int64_t rows, int64_t cols,
                                           int64_t rows_per_group, float eps) {
  const int64_t row0 = int64_t(blockIdx.x) * rows_per_group;
  const int64_t row_end = imin(row0 + rows_per_group, rows);
  float* shift_out = partial + int64_t(blockIdx.x) * 2 * cols;
  float* acc = shift_out + cols;  // this block's private accumulator row
  for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) {
    shift_out[k] = 0.f;  // softmax entries are in [0, 1]: summed unshifted (see cpu/sinkhorn.cpp)
    acc[k] = 0.f;
  }
  for (int64_t r = row0; r < row_end; r += kRowsPerBatch) {
    const int nr = int(imin(kRowsPerBatch, row_end - r));
    float m[kRowsPerBatch];
    float s[kRowsPerBatch];
#pragma unroll
    for (int i = 0; i < kRowsPerBatch; ++i) {
      m[i] = -INFINITY;
      s[i] = 0.f;
    }
    for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) {
      const float lu = log_u[k];
#pragma unroll
      for (int i = 0; i < kRowsPerBatch; ++i) {
        if (i < nr) online_add(m[i], s[i], logit(scores, r + i, k, cols, eps, lu));
      }
    }
    block_reduce<kRowsPerBatch>(m, s);
    float shift[kRowsPerBatch];
    float inv_sum[kRowsPerBatch];
#pragma unroll
    for (int i = 0; i < kRowsPerBatch; ++i) {
      shift[i] = finite_or_zero(m[i]);
      inv_sum[i] = 1.f / s[i];
    }
    for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) {
      const float lu = log_u[k];
      float a = 0.f;
#pragma unroll
      for (int i = 0; i < kRowsPerBatch; ++i) {
        if (i < nr) a += __expf(logit(scores, r + i, k, cols, eps, lu) - shift[i]) * inv_sum[i];
      }
      acc[k] += a;
    }
  }
}

// Combines the column's partials and stores what `mode` asks for (sinkhorn_merge.h).
__global__ void merge_kernel(const float* __restrict__ partial, int64_t groups, int64_t cols,
                             float* out, float* log_u, float log_b, float log_k,
                             SinkhornMerge mode) {
  const int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float m = -INFINITY;
  for (int64_t g = 0; g < groups; ++g) m = fmaxf(m, partial[g * 2 * cols + col]);
  const float shift = finite_or_zero(m);
  double s = 0.0;
  for (int64_t g = 0; g < groups; ++g) {
    s += double(partial[g * 2 * cols + cols + col]) *
         double(__expf(partial[g * 2 * cols + col] - shift));
  }
  const float lse = shift + float(log(s));
  if (mode == SinkhornMerge::kStats) {
    out[col] = shift;
    out[cols + col] = float(s);
  } else {
    log_u[col] = sinkhorn_log_u(mode, lse, log_u[col], log_b, log_k);
  }
}

// iterations = 0: log_u holds the column logsumexps; every entry becomes
// -logsumexp_k(lse_k), so that codes = B * exp(L + log_u). One block.
__global__ void total_kernel(float* log_u, int64_t cols) {
  float m[1] = {-INFINITY};
  float s[1] = {0.f};
  for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) online_add(m[0], s[0], log_u[k]);
  block_reduce<1>(m, s);  // ends with a barrier: every read above is done before the writes
  const float value = -(finite_or_zero(m[0]) + float(log(double(s[0]))));
  for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) log_u[k] = value;
}

// codes[row] = softmax(z) (normalize) or scale * exp(z); one block per row.
template <typename T>
__global__ void codes_kernel(const T* __restrict__ scores, const float* __restrict__ log_u,
                             float* __restrict__ out, int64_t cols, float eps, bool normalize,
                             float scale) {
  const int64_t row = blockIdx.x;
  float shift = 0.f;
  float factor = scale;
  if (normalize) {
    float m[1] = {-INFINITY};
    float s[1] = {0.f};
    for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) {
      online_add(m[0], s[0], logit(scores, row, k, cols, eps, log_u[k]));
    }
    block_reduce<1>(m, s);
    shift = finite_or_zero(m[0]);
    factor = 1.f / s[0];
  }
  for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) {
    out[row * cols + k] = __expf(logit(scores, row, k, cols, eps, log_u[k]) - shift) * factor;
  }
}

// ------------------------------------------------------------------------- launchers

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

template <typename Fn>
void dispatch_input(const at::Tensor& scores, Fn&& fn) {
  switch (scores.scalar_type()) {
    case at::kFloat:
      fn(scores.data_ptr<float>());
      break;
    case at::kHalf:
      fn(scores.data_ptr<at::Half>());
      break;
    case at::kBFloat16:
      fn(scores.data_ptr<at::BFloat16>());
      break;
    default:  // check_sinkhorn_scores (op_checks.h) has rejected every other dtype
      TORCH_INTERNAL_ASSERT(false, "sinkhorn: unchecked scores dtype ", scores.scalar_type());
  }
}

// Per-row-group statistics: (G, 2, K) fp32 partials.
at::Tensor launch_colstats(const at::Tensor& scores, const at::Tensor& log_u, float eps,
                           bool normalize_rows) {
  const int64_t rows = scores.size(0);
  const int64_t cols = scores.size(1);
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (normalize_rows) {
    const int64_t groups =
        std::max<int64_t>(1, std::min<int64_t>(4 * sm_count(), ceil_div(rows, kRowsPerBatch)));
    const int64_t per = std::max<int64_t>(
        kRowsPerBatch, ceil_div(ceil_div(rows, groups), kRowsPerBatch) * kRowsPerBatch);
    const int64_t used = std::max<int64_t>(1, ceil_div(rows, per));
    at::Tensor partial = at::empty({used, 2, cols}, scores.options().dtype(at::kFloat));
    const int threads = cols >= 4096 ? 512 : kThreads;
    dispatch_input(scores, [&](const auto* data) {
      normalized_colstats_kernel<<<unsigned(used), threads, 0, stream>>>(
          data, log_u.data_ptr<float>(), partial.data_ptr<float>(), rows, cols, per, eps);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return partial;
  }
  const int64_t col_tiles = ceil_div(cols, kThreads);
  const int64_t want =
      std::max<int64_t>(1, std::min(ceil_div(rows, 16), ceil_div(4 * sm_count(), col_tiles)));
  const int64_t per = std::max<int64_t>(1, ceil_div(rows, want));
  const int64_t groups = std::max<int64_t>(1, ceil_div(rows, per));
  at::Tensor partial = at::empty({groups, 2, cols}, scores.options().dtype(at::kFloat));
  dispatch_input(scores, [&](const auto* data) {
    plain_colstats_kernel<<<dim3(unsigned(groups), unsigned(col_tiles)), kThreads, 0, stream>>>(
        data, log_u.data_ptr<float>(), partial.data_ptr<float>(), rows, cols, per, eps);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partial;
}

void launch_merge(const at::Tensor& partial, float* out, float* log_u, SinkhornMerge mode,
                  float log_b, float log_k) {
  const int64_t cols = partial.size(2);
  merge_kernel<<<unsigned(ceil_div(cols, kThreads)), kThreads, 0,
                 at::cuda::getCurrentCUDAStream()>>>(partial.data_ptr<float>(), partial.size(0),
                                                     cols, out, log_u, log_b, log_k, mode);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor launch_codes(const at::Tensor& scores, const at::Tensor& log_u, float eps,
                        bool normalize_rows, float scale) {
  const int64_t rows = scores.size(0);
  const int64_t cols = scores.size(1);
  at::Tensor out = at::empty({rows, cols}, scores.options().dtype(at::kFloat));
  if (rows == 0 || cols == 0) return out;
  const int threads = cols >= 4096 ? 512 : kThreads;
  dispatch_input(scores, [&](const auto* data) {
    codes_kernel<<<unsigned(rows), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        data, log_u.data_ptr<float>(), out.data_ptr<float>(), cols, eps, normalize_rows, scale);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// The op-level contract (op_checks.h) on a CUDA tensor.
void check(const at::Tensor& scores, double epsilon) {
  check_sinkhorn_scores(scores, epsilon);
  TORCH_CHECK(scores.is_cuda(), "sinkhorn: scores must be a CUDA tensor, got ", scores.device());
}

at::Tensor float_log_u(const at::Tensor& scores, const at::Tensor& log_u) {
  check_sinkhorn_log_u(log_u, scores.size(1));
  TORCH_CHECK(log_u.device() == scores.device(), "sinkhorn: log_u must be on ", scores.device(),
              ", got ", log_u.device());
  return log_u.to(at::kFloat).contiguous();
}

at::Tensor sinkhorn_colstats_cuda(const at::Tensor& scores_in, const at::Tensor& log_u,
                                  double epsilon, bool normalize_rows) {
  check(scores_in, epsilon);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const at::Tensor lu = float_log_u(scores, log_u);
  at::Tensor out = at::empty({2, scores.size(1)}, scores.options().dtype(at::kFloat));
  if (scores.size(1) == 0) return out;
  const at::Tensor partial = launch_colstats(scores, lu, float(epsilon), normalize_rows);
  launch_merge(partial, out.data_ptr<float>(), nullptr, SinkhornMerge::kStats, 0.f, 0.f);
  return out;
}

at::Tensor sinkhorn_codes_cuda(const at::Tensor& scores_in, const at::Tensor& log_u, double epsilon,
                               bool normalize_rows) {
  check(scores_in, epsilon);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  return launch_codes(scores, float_log_u(scores, log_u), float(epsilon), normalize_rows, 1.f);
}

// The fused op: T + 1 (colstats, merge) launches and one codes launch, no host sync.
at::Tensor sinkhorn_cuda(const at::Tensor& scores_in, double epsilon, int64_t iterations) {
  check(scores_in, epsilon);
  check_sinkhorn_iterations(iterations);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const int64_t rows = scores.size(0);
  const int64_t cols = scores.size(1);
  if (rows == 0 || cols == 0) return at::empty({rows, cols}, scores.options().dtype(at::kFloat));
  const float eps = float(epsilon);
  const float log_b = std::log(float(rows));
  const float log_k = float(std::log(double(cols)));
  at::Tensor log_u = at::zeros({cols}, scores.options().dtype(at::kFloat));
  float* lu = log_u.data_ptr<float>();
  at::Tensor partial = launch_colstats(scores, log_u, eps, /*normalize_rows=*/false);
  if (iterations == 0) {
    launch_merge(partial, nullptr, lu, SinkhornMerge::kLse, log_b, log_k);
    total_kernel<<<1, 1024, 0, at::cuda::getCurrentCUDAStream()>>>(lu, cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return launch_codes(scores, log_u, eps, /*normalize_rows=*/false, float(rows));
  }
  launch_merge(partial, nullptr, lu, SinkhornMerge::kFirst, log_b, log_k);
  for (int64_t t = 1; t < iterations; ++t) {
    partial = launch_colstats(scores, log_u, eps, /*normalize_rows=*/true);
    launch_merge(partial, nullptr, lu, SinkhornMerge::kUpdate, log_b, log_k);
  }
  return launch_codes(scores, log_u, eps, /*normalize_rows=*/true, 1.f);
}

}  // namespace

TORCH_LIBRARY_IMPL(seer_kernels, CUDA, m) {
  m.impl("sinkhorn", &sinkhorn_cuda);
  m.impl("sinkhorn_colstats", &sinkhorn_colstats_cuda);
  m.impl("sinkhorn_codes", &sinkhorn_codes_cuda);
}

}  // namespace seer_kernels::cuda::sinkhorn

// Warp and block reductions for the CUDA kernels (csrc/cuda/*.cu), written once: every
// one is a fixed butterfly / tree over the lanes, so a result never depends on timing
// (deterministic, no atomics), and all lanes of a warp must take part (full mask).
#pragma once

namespace seer_kernels::cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};

struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};

// op over the 32 lanes of a warp; every lane gets the result.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  return warp_reduce(v, SumOp());
}

// The same butterfly for a state of two values (a, b) that merge(a, b, a2, b2) combines
// in place, e.g. Sinkhorn's online (max, sum of exp) pairs.
template <typename T, typename Merge>
__device__ __forceinline__ void warp_reduce_pair(T& a, T& b, Merge merge) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    merge(a, b, __shfl_xor_sync(kFullMask, a, offset), __shfl_xor_sync(kFullMask, b, offset));
  }
}

// op over a block of kWarps full warps, in a fixed tree; every thread gets the result.
// smem holds kWarps values; the leading barrier lets consecutive calls reuse it.
template <int kWarps, typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity, T* smem) {
  const int lane = threadIdx.x & (kWarpSize - 1), warp = threadIdx.x / kWarpSize;
  v = warp_reduce(v, op);
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = lane < kWarps ? smem[lane] : identity;
  return warp_reduce(v, op);
}

}  // namespace seer_kernels::cuda

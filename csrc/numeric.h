// Numeric rules every backend shares, usable from both .cpp (g++) and .cu (nvcc):
// the accumulation type of an input dtype, and SEER_HOST_DEVICE for small helpers that
// the CPU code and the CUDA kernels both call. The Python side's counterpart of the
// accumulation rule is the dtype of the saved statistics (prototype_scores' rnorms,
// swav_cross_entropy's loss), which these ops return and check.
#pragma once

#include <c10/core/ScalarType.h>

#include <type_traits>

#if defined(__CUDACC__)
#define SEER_HOST_DEVICE __host__ __device__
#else
#define SEER_HOST_DEVICE
#endif

namespace seer_kernels {

// Accumulation type: fp64 for fp64 input, fp32 for every other floating dtype (fp32,
// fp16, bf16). The same rule as at::opmath_type for these dtypes, stated once here.
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The same rule on a runtime dtype (for tensors of accumulated values).
inline c10::ScalarType acc_dtype(c10::ScalarType t) {
  return t == c10::ScalarType::Double ? c10::ScalarType::Double : c10::ScalarType::Float;
}

}  // namespace seer_kernels

// The at::parallel_for grain of the CPU ops' row passes, shared by their tensor sides
// (<op>.cpp): a pass over rows of d elements runs inline below ATen's own grain
// (at::internal::GRAIN_SIZE elements), so small problems stay on the calling thread.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace seer_kernels::cpu {

// Rows per task for rows of d elements: at least 1.
inline int64_t row_grain(int64_t d) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(d, 1));
}

}  // namespace seer_kernels::cpu

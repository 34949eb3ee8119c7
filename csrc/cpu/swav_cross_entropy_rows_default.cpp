// SwAV cross-entropy row kernels for the baseline instruction set (any CPU).
#include "swav_cross_entropy_isa.h"

#define CPU_CAPABILITY DEFAULT
#include "swav_cross_entropy_kernel.h"

namespace seer_kernels::cpu::swav_cross_entropy {
RowKernels row_kernels_default() { return DEFAULT::row_kernels(); }
}  // namespace seer_kernels::cpu::swav_cross_entropy

// SwAV cross-entropy row kernels compiled for AVX2 + FMA (8 floats a vector, Sleef exp).
#include "swav_cross_entropy_isa.h"

#if SEER_XENT_X86_GCC
#pragma GCC push_options
#define SEER_ISA_AVX2
#include "isa_target.h"  // after the shared headers: only the code below sees it
#include "swav_cross_entropy_kernel.h"
#pragma GCC pop_options

namespace seer_kernels::cpu::swav_cross_entropy {
RowKernels row_kernels_avx2() { return AVX2::row_kernels(); }
}  // namespace seer_kernels::cpu::swav_cross_entropy
#else
namespace seer_kernels::cpu::swav_cross_entropy {
RowKernels row_kernels_avx2() { return row_kernels_default(); }
}  // namespace seer_kernels::cpu::swav_cross_entropy
#endif

// SwAV cross-entropy row kernels compiled for AVX-512 (16 floats a vector, Sleef exp);
// the same feature set ATen's own AVX512 kernels are built with.
#include "swav_cross_entropy_isa.h"

#if SEER_XENT_X86_GCC
#pragma GCC push_options
#define SEER_ISA_AVX512
#include "isa_target.h"  // after the shared headers: only the code below sees it
#include "swav_cross_entropy_kernel.h"
#pragma GCC pop_options

namespace seer_kernels::cpu::swav_cross_entropy {
RowKernels row_kernels_avx512() { return AVX512::row_kernels(); }
}  // namespace seer_kernels::cpu::swav_cross_entropy
#else
namespace seer_kernels::cpu::swav_cross_entropy {
RowKernels row_kernels_avx512() { return row_kernels_default(); }
}  // namespace seer_kernels::cpu::swav_cross_entropy
#endif

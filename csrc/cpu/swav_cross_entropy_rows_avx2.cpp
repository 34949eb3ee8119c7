// SwAV cross-entropy row kernels compiled for AVX2 + FMA (8 floats a vector, Sleef exp).
#include "swav_cross_entropy_isa.h"

#if SEER_XENT_X86_GCC
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
// GCC's C++ front end does not define the ISA macros for `#pragma GCC target`, but
// ATen's vec headers and sleef.h select their code with them: define them here, after
// the shared headers, so only the code below sees them.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "swav_cross_entropy_kernel.h"
#pragma GCC pop_options

namespace seer_kernels::xent {
RowKernels row_kernels_avx2() { return AVX2::row_kernels(); }
}  // namespace seer_kernels::xent
#else
namespace seer_kernels::xent {
RowKernels row_kernels_avx2() { return row_kernels_default(); }
}  // namespace seer_kernels::xent
#endif

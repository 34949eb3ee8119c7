// SwAV cross-entropy row kernels compiled for AVX-512 (16 floats a vector, Sleef exp);
// the same feature set ATen's own AVX512 kernels are built with.
#include "swav_cross_entropy_isa.h"

#if SEER_XENT_X86_GCC
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
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
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "swav_cross_entropy_kernel.h"
#pragma GCC pop_options

namespace seer_kernels::xent {
RowKernels row_kernels_avx512() { return AVX512::row_kernels(); }
}  // namespace seer_kernels::xent
#else
namespace seer_kernels::xent {
RowKernels row_kernels_avx512() { return row_kernels_default(); }
}  // namespace seer_kernels::xent
#endif

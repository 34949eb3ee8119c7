// Compiles the rest of a translation unit for one x86-64 instruction set, for the
// per-capability kernel units (sinkhorn_kernels_<isa>.cpp, swav_cross_entropy_rows_<isa>.cpp).
// The extension is built for baseline x86-64, where at::vec::Vectorized<float> is a scalar
// loop; these units get AVX2 or AVX-512 code and the ops pick one with
// at::get_cpu_capability() (which honours ATEN_CPU_CAPABILITY).
//
// Use: include the unit's shared headers first (so std/c10 inline code keeps the baseline
// instruction set), then `#define SEER_ISA_AVX512` or `#define SEER_ISA_AVX2` and include
// this file; it defines CPU_CAPABILITY for the ATen vec headers that follow. GCC on x86-64
// only: guard the unit with a check for both.
// No include guard on purpose: it changes how everything after it compiles.

#if defined(SEER_ISA_AVX512)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#elif defined(SEER_ISA_AVX2)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#else
#error "define SEER_ISA_AVX512 or SEER_ISA_AVX2 before including isa_target.h"
#endif

// The vector headers trip warnings that do not apply here: ABI notes for vector returns
// (every such function is inlined or internal to its unit), unknown pragmas (clang's),
// and a false maybe-uninitialized inside GCC's own intrinsics.
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// g++ does not define the ISA macros for a C++ `#pragma GCC target`, but ATen's vec
// headers and sleef.h select their code paths with them: define them as -m flags would.
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
#ifndef __BMI__
#define __BMI__ 1
#endif
#ifndef __BMI2__
#define __BMI2__ 1
#endif

#if defined(SEER_ISA_AVX512)
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
#else
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif

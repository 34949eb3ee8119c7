// The Sinkhorn row kernels for AVX-512 (16 lanes), used when at::get_cpu_capability()
// says AVX512. Only GCC on x86-64 builds them (pragma target); elsewhere the table falls
// back to the default one.
#include "sinkhorn_kernels.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
// The vector headers trip warnings that do not apply here: ABI notes for vector
// returns (every such function is inlined or internal to this file), unknown pragmas
// (clang's), and a false maybe-uninitialized inside GCC's own intrinsics.
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// g++ does not define the ISA macros for a C++ `#pragma GCC target`; the ATen and
// Sleef headers select their code paths with them, so define them as -m flags would.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __BMI__ 1
#define __BMI2__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "sinkhorn_kernels_impl.h"

namespace seer_kernels::cpu::sinkhorn {
const Kernels& kernels_avx512() { return AVX512::table(); }
}  // namespace seer_kernels::cpu::sinkhorn
#else
namespace seer_kernels::cpu::sinkhorn {
const Kernels& kernels_avx512() { return kernels_default(); }
}  // namespace seer_kernels::cpu::sinkhorn
#endif

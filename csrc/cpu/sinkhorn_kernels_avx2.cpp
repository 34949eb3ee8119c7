// The Sinkhorn row kernels for AVX2 + FMA (8 lanes), used when at::get_cpu_capability()
// says AVX2. Only GCC on x86-64 builds them (pragma target); elsewhere the table falls
// back to the default one.
#include "sinkhorn_kernels.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SEER_ISA_AVX2
#include "isa_target.h"
#include "sinkhorn_kernels_impl.h"

namespace seer_kernels::cpu::sinkhorn {
const Kernels& kernels_avx2() { return AVX2::table(); }
}  // namespace seer_kernels::cpu::sinkhorn
#else
namespace seer_kernels::cpu::sinkhorn {
const Kernels& kernels_avx2() { return kernels_default(); }
}  // namespace seer_kernels::cpu::sinkhorn
#endif

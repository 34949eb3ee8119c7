// The Sinkhorn row kernels for AVX-512 (16 lanes), used when at::get_cpu_capability()
// says AVX512. Only GCC on x86-64 builds them (pragma target); elsewhere the table falls
// back to the default one.
#include "sinkhorn_kernels.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SEER_ISA_AVX512
#include "isa_target.h"
#include "sinkhorn_kernels_impl.h"

namespace seer_kernels::cpu::sinkhorn {
const Kernels& kernels_avx512() { return AVX512::table(); }
}  // namespace seer_kernels::cpu::sinkhorn
#else
namespace seer_kernels::cpu::sinkhorn {
const Kernels& kernels_avx512() { return kernels_default(); }
}  // namespace seer_kernels::cpu::sinkhorn
#endif

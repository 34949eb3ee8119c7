// The Sinkhorn row kernels for the baseline instruction set (Vectorized<float> is a
// plain array there): correct everywhere, used when neither AVX2 nor AVX-512 is.
#define CPU_CAPABILITY DEFAULT
#include "sinkhorn_kernels_impl.h"

namespace seer_kernels::cpu::sinkhorn {
const Kernels& kernels_default() { return DEFAULT::table(); }
}  // namespace seer_kernels::cpu::sinkhorn

// The Sinkhorn row kernels for the baseline instruction set (Vectorized<float> is a
// plain array there): correct on any CPU, used when neither AVX2 nor AVX-512 is; isa.h
// has the scheme.
#include "sinkhorn_kernels.h"

#define SEER_ISA_DEFAULT
#include "isa.h"
#include "sinkhorn_kernels_impl.h"

namespace seer_kernels::cpu::sinkhorn {
const Kernels& kernels_default() { return DEFAULT::table(); }
}  // namespace seer_kernels::cpu::sinkhorn

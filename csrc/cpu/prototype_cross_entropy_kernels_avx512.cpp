// Fused SwAV head row kernels for AVX-512 (16 floats a vector, Sleef exp); isa.h has the scheme.
#include "prototype_cross_entropy_kernels.h"

#define SEER_ISA_AVX512
#include "isa.h"
#include "prototype_cross_entropy_kernels_impl.h"

namespace seer_kernels::cpu::prototype_cross_entropy {
const Kernels& kernels_avx512() { return AVX512::table(); }
}  // namespace seer_kernels::cpu::prototype_cross_entropy

// Fused SwAV head row kernels for the baseline instruction set (any CPU); isa.h has the scheme.
#include "prototype_cross_entropy_kernels.h"

#define SEER_ISA_DEFAULT
#include "isa.h"
#include "prototype_cross_entropy_kernels_impl.h"

namespace seer_kernels::cpu::prototype_cross_entropy {
const Kernels& kernels_default() { return DEFAULT::table(); }
}  // namespace seer_kernels::cpu::prototype_cross_entropy

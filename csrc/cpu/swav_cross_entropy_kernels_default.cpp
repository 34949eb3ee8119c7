// SwAV cross-entropy row kernels for the baseline instruction set (any CPU); isa.h has
// the scheme.
#include "swav_cross_entropy_kernels.h"

#define SEER_ISA_DEFAULT
#include "isa.h"
#include "swav_cross_entropy_kernels_impl.h"

namespace seer_kernels::cpu::swav_cross_entropy {
const Kernels& kernels_default() { return DEFAULT::table(); }
}  // namespace seer_kernels::cpu::swav_cross_entropy

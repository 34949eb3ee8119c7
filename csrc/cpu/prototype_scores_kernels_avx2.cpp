// Prototype-scores row kernels for AVX2 + FMA; isa.h has the scheme.
#include "prototype_scores_kernels.h"

#define SEER_ISA_AVX2
#include "isa.h"
#include "prototype_scores_kernels_impl.h"

namespace seer_kernels::cpu::prototype_scores {
const Kernels& kernels_avx2() { return AVX2::table(); }
}  // namespace seer_kernels::cpu::prototype_scores

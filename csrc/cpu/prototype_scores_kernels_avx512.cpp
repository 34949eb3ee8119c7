// Prototype-scores row kernels for AVX-512 (GCC vectorizes them 16 floats wide); isa.h has the
// scheme.
#include "prototype_scores_kernels.h"

#define SEER_ISA_AVX512
#include "isa.h"
#include "prototype_scores_kernels_impl.h"

namespace seer_kernels::cpu::prototype_scores {
const Kernels& kernels_avx512() { return AVX512::table(); }
}  // namespace seer_kernels::cpu::prototype_scores

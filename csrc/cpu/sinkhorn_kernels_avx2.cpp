// The Sinkhorn row kernels for AVX2 + FMA (8 lanes); isa.h has the scheme.
#include "sinkhorn_kernels.h"

#define SEER_ISA_AVX2
#include "isa.h"
#include "sinkhorn_kernels_impl.h"

namespace seer_kernels::cpu::sinkhorn {
const Kernels& kernels_avx2() { return AVX2::table(); }
}  // namespace seer_kernels::cpu::sinkhorn

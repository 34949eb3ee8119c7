// The Sinkhorn row kernels for AVX-512 (16 lanes, the vscalef exp); isa.h has the scheme.
#include "sinkhorn_kernels.h"

#define SEER_ISA_AVX512
#include "isa.h"
#include "sinkhorn_kernels_impl.h"

namespace seer_kernels::cpu::sinkhorn {
const Kernels& kernels_avx512() { return AVX512::table(); }
}  // namespace seer_kernels::cpu::sinkhorn

// Interface between the SwAV cross-entropy op (swav_cross_entropy.cpp: tensors, checks,
// threading, the loss reduction) and its row kernels, compiled once per instruction set
// (swav_cross_entropy_kernels_impl.h included by swav_cross_entropy_kernels_{avx512,avx2,
// default}.cpp, the scheme of isa.h). Only raw pointers cross this boundary, so the ISA
// units include no tensor headers.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace seer_kernels::cpu::swav_cross_entropy {

// One call's operands, contiguous: scores (V, B, K), codes (A, B, K). Rows accumulate in
// double for double scores and in float otherwise; lse (V, B) is always double, because
// backward needs lse to better than one float ulp of |lse| (which is ~|score| / T).
struct Problem {
  const void* scores;
  c10::ScalarType scores_dtype;
  const void* codes;
  c10::ScalarType codes_dtype;
  int64_t V, A, B, K;
  double temperature;
};

// Rows b in [b0, b1): lse[v * B + b] = logsumexp_k scores[v, b, k] / T (double) and
// terms[b] = sum_v (lse[v, b] * R_v[b] - <C_v[b], scores[v, b]> / T), the loss before
// the 1 / (A (V - 1) B) normalization.
using ForwardRows = void (*)(const Problem&, void* lse, double* terms, int64_t b0, int64_t b1);
// Rows b in [b0, b1): grad[v, b] = (R_v[b] softmax(scores[v, b] / T) - C_v[b]) * scale,
// grad in the dtype of scores.
using BackwardRows = void (*)(const Problem&, const void* lse, double scale, void* grad, int64_t b0,
                              int64_t b1);

struct Kernels {
  ForwardRows forward;
  BackwardRows backward;
};

const Kernels& kernels_avx512();
const Kernels& kernels_avx2();
const Kernels& kernels_default();

}  // namespace seer_kernels::cpu::swav_cross_entropy

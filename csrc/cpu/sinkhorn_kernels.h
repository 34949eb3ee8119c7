// Row-range kernels of the CPU Sinkhorn (csrc/cpu/sinkhorn.cpp drives them).
//
// The kernels are compiled once per instruction set (sinkhorn_kernels_{avx512,avx2,
// default}.cpp, the scheme of isa.h), so that at::vec::Vectorized<float> is a real 16- or
// 8-lane vector with Sleef's exp: the extension itself is compiled for baseline x86-64,
// where Vectorized<float> is a scalar loop. sinkhorn.cpp takes the table that
// select_kernels() (isa.h) picks, like ATen's own kernels (ATEN_CPU_CAPABILITY=avx2|default
// forces a lower one).
//
// The kernels only see raw pointers; threading (at::parallel_for) stays in sinkhorn.cpp.
// Rows of K columns are processed in a padded width Kp (a multiple of the vector size);
// the padding lanes hold -inf logits, so they add exactly nothing to any sum.
#pragma once

#include <cstdint>

namespace seer_kernels::cpu::sinkhorn {

enum class InputType : int { kFloat = 0, kHalf = 1, kBFloat16 = 2 };

struct Problem {
  const void* scores;  // (B, K) row-major, `type`
  InputType type;
  int64_t rows;    // B
  int64_t cols;    // K
  int64_t padded;  // Kp: K rounded up to a multiple of the vector width
  float epsilon;
  const float* log_u;  // (Kp,) per-prototype log scaling; padding lanes are 0
};

struct Kernels {
  // Vector width in floats (Kp must be a multiple of it).
  int64_t width;
  // Column statistics of rows [row0, row0 + rows) into stats (2, Kp): row 0 a finite
  // per-column shift, row 1 the sum over those rows of exp(x - shift), where
  // x = scores / eps + log_u, minus the row's logsumexp when normalize_rows.
  // buffer: kBlockRows * Kp floats of scratch owned by the calling thread.
  void (*colstats_rows)(const Problem& p, int64_t row0, int64_t rows, bool normalize_rows,
                        float* buffer, float* stats);
  // Merge `chunks` (2, Kp) partial stats (contiguous, chunk-major) over the column
  // range [col0, col1) into out (2, Kp): shift = max of the chunk shifts (0 where it is
  // not finite), sum = sum of the chunk sums rescaled to it.
  void (*merge_stats)(const float* stats, int64_t chunks, int64_t padded, int64_t col0,
                      int64_t col1, float* out);
  // codes[b, :] = softmax_k(x[b, :]) (normalize_rows) or scale * exp(x[b, :]) for rows
  // [row0, row0 + rows); out is (B, K) fp32 row-major. buffer: Kp floats of scratch.
  void (*codes_rows)(const Problem& p, int64_t row0, int64_t rows, bool normalize_rows, float scale,
                     float* buffer, float* out);

  // The exp domain (sinkhorn.cpp has the algorithm). Rows [row0, row0 + rows) form one
  // row chunk; e is the (B, K) fp32 codes buffer, which holds E between the passes.
  //
  // Pass 0 of a chunk (log_u is not read): stats[0:Kp] = the chunk's per-column shift
  // m = max_b L[b, :] (0 where not finite), e[b, :] = E = exp(L[b, :] - m) and
  // stats[Kp:2Kp] = sum_b E[b, :]: the (shift, sum) statistics of colstats_rows.
  // buffer: Kp floats of scratch.
  void (*exp_first_rows)(const Problem& p, int64_t row0, int64_t rows, float* buffer, float* e,
                         float* stats);
  // Pass t >= 1 of a chunk whose pass-0 shift is `shift` (Kp), with the weights
  // g = exp(shift + log_u - G) (G their max over the K columns) and row sums
  // r_b = sum_k E[b, k] g_k: not last, col_sum[0:Kp] = sum_b P[b, :] with P the row
  // softmax of x = L + log_u; last, e[b, :] = P[b, :] in place (the codes). A row whose
  // r_b is below min_row_sum (or NaN) takes its P from the scores in the log domain
  // instead (E underflowed there). buffer: 3 * Kp floats of scratch.
  void (*exp_pass_rows)(const Problem& p, const float* shift, int64_t row0, int64_t rows, bool last,
                        float min_row_sum, float* buffer, float* e, float* col_sum);
};

// Rows per register block of the column accumulation (scratch of colstats_rows).
constexpr int64_t kBlockRows = 8;

const Kernels& kernels_avx512();
const Kernels& kernels_avx2();
const Kernels& kernels_default();

}  // namespace seer_kernels::cpu::sinkhorn

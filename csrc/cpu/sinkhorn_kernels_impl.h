// The CPU Sinkhorn row kernels, written once with at::vec::Vectorized<float> and
// compiled per instruction set by sinkhorn_kernels_{avx512,avx2,default}.cpp (the scheme
// is in isa.h). See sinkhorn_kernels.h for the contracts and sinkhorn.cpp for the algorithm.
//
// Per element of a (B, K) pass (fp32 input; bf16/fp16 read 2 bytes instead of 4):
//   colstats, plain (pass 0)   4 B read; x / eps (3 FMA-unit ops, no divide) + log_u,
//                              stored to an L2-resident 8-row buffer with the row max;
//                              then per column: block max, 1 exp (~13 vector ops per 16
//                              lanes on AVX-512) and an add; the running sum is rescaled
//                              only when a column's max moves.
//   colstats, normalize_rows   4 B read, then 3 sweeps over the row buffer: z and its max,
//                              e = exp(z - max) and its sum, column sums of e / sum
//                              (1 fma): 1 exp per element.
//   codes                      4 B read + 4 B written (non-temporal when large), the same
//                              sweeps, 1 exp per element.
// Exp domain (the fused op with T >= 1; sinkhorn.cpp has the algorithm):
//   first pass (per chunk)     4 B read (the column max), 4 B read again from cache,
//                              x / eps - m, 1 exp, 4 B written (non-temporal when large).
//   middle pass                4 B read of E: its row sum with g (1 fma), then from L2 the
//                              column sums of E / r_b over blocks of up to 8 rows (1 fma);
//                              no exp. Bandwidth-bound.
//   last pass                  4 B read + 4 B written in place: E * g / r_b (2 mul).
// Column accumulators (2 * Kp floats per chunk) and the row buffer (8 * Kp floats) stay
// in L2 for K up to 16k, so DRAM traffic is the scores (and the codes) only; the sweeps
// that only compute prefetch the next row so the memory and the exps overlap.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "rows.h"  // load_floats, lane_sum
#include "sinkhorn_kernels.h"

namespace seer_kernels::cpu::sinkhorn::CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kWidth = Vec::size();
constexpr float kInf = std::numeric_limits<float>::infinity();

// exp with NaN/inf semantics of std::exp and ~1 ulp error (measured against double exp:
// at most 1.01 ulp over 22M points of [-110, 90], denormal results within 2^-149):
// Cody-Waite reduction and cephes' degree-6 polynomial, ~1.6x the throughput of
// Sleef_expf16_u10 on AVX-512 and under half the instructions of Sleef_expf8_u10 on AVX2
// (called out of line there); exp is most of the work of the passes that compute it. The
// result p * 2^n is scaled by vscalefps on AVX-512; on AVX2 by 2^(n/2) and then
// 2^(n - n/2), both normal floats for n in [-150, 128], so the first product is exact and
// the second rounds once, into the denormals as well: the same bits as vscalefps (checked
// over 5.7M inputs). Baseline ISA: Sleef.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
inline Vec exp_(const Vec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  // max/min with the constant first return the second operand when it is NaN: NaN stays.
  const Vec x(_mm512_min_ps(_mm512_set1_ps(89.f), _mm512_max_ps(_mm512_set1_ps(-104.f), v)));
#else
  const Vec x(_mm256_min_ps(_mm256_set1_ps(89.f), _mm256_max_ps(_mm256_set1_ps(-104.f), v)));
#endif
  const Vec n = (x * Vec(1.44269504088896341f)).round();  // to nearest even
  Vec r = at::vec::fnmadd(n, Vec(0.693145751953125f), x);
  r = at::vec::fnmadd(n, Vec(1.428606765330187045e-06f), r);
  Vec p(1.9875691500e-4f);
  p = at::vec::fmadd(p, r, Vec(1.3981999507e-3f));
  p = at::vec::fmadd(p, r, Vec(8.3334519073e-3f));
  p = at::vec::fmadd(p, r, Vec(4.1665795894e-2f));
  p = at::vec::fmadd(p, r, Vec(1.6666665459e-1f));
  p = at::vec::fmadd(p, r, Vec(5.0000001201e-1f));
  p = at::vec::fmadd(p, r * r, r) + Vec(1.f);
#if defined(CPU_CAPABILITY_AVX512)
  return Vec(_mm512_scalef_ps(p, n));
#else
  const __m256i ni = _mm256_cvtps_epi32(n);  // garbage for NaN, but p is NaN then
  const __m256i half = _mm256_srai_epi32(ni, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), bias), 23));
  return Vec(_mm256_mul_ps(_mm256_mul_ps(p, s1), s2));
#endif
}
#else
inline Vec exp_(const Vec& v) { return v.exp(); }
#endif

// x / eps, rounded as the reference's division: L = x / eps must round exactly (at eps
// 0.01 an ulp of L is 8e-6). With FMA the divider (a fifth of a pass's time in a
// profile) is avoided: q = x * (1/eps) is corrected once with the exact residual
// fma(-q, eps, x) (Markstein), which yields the correctly rounded quotient; infinite or
// NaN quotients keep q (the residual would be inf - inf). Without FMA: plain division.
class Divisor {
 public:
  explicit Divisor(float eps) : eps_(eps), inv_(1.f / eps) {}
  Vec operator()(const Vec& x) const {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    const Vec q = x * inv_;
    const Vec residual = at::vec::fmadd(q.neg(), eps_, x);
    return Vec::blendv(q, at::vec::fmadd(residual, inv_, q), (q - q) == Vec(0.f));
#else
    return x / eps_;
#endif
  }

 private:
  Vec eps_;
  Vec inv_;
};

// z = x / eps + log_u for the W columns at j of one row; -inf past the row's end so that
// padding lanes add exp(-inf) = 0 to every sum.
template <typename T>
inline Vec load_z(const T* row, int64_t j, int64_t cols, const Divisor& divide,
                  const float* log_u) {
  const Vec x = j + kWidth <= cols ? load_floats(row + j) : load_floats(row + j, cols - j, -kInf);
  return divide(x) + Vec::loadu(log_u + j);
}

// max(a, b) as one instruction. NaN need not propagate through maxima here: every max
// is only a shift, and a NaN element still reaches its sum through exp(NaN - shift), so
// NaN rows and columns come out NaN as in the reference. (ATen's NaN-propagating
// maximum is three dependent instructions on the row max's critical path.)
inline Vec max_(const Vec& a, const Vec& b) {
#if defined(CPU_CAPABILITY_AVX512)
  return Vec(_mm512_max_ps(__m512(a), __m512(b)));
#elif defined(CPU_CAPABILITY_AVX2)
  return Vec(_mm256_max_ps(__m256(a), __m256(b)));
#else
  return at::vec::maximum(a, b);
#endif
}

// m where it is finite, else 0 (the reference's m_safe): x - x is 0 only for finite x.
inline Vec finite_or_zero(const Vec& m) { return Vec::blendv(Vec(0.f), m, (m - m) == Vec(0.f)); }

inline bool all_equal(const Vec& a, const Vec& b) {
  constexpr int kAll = (1 << kWidth) - 1;
  return (a != b).zero_mask() == kAll;
}

// Horizontal max that propagates NaN (a NaN logit must poison its row, as in torch).
inline float reduce_max(const Vec& v) {
  alignas(64) float tmp[kWidth];
  v.store(tmp);
  float m = -kInf;
  for (int64_t i = 0; i < kWidth; ++i) {
    m = std::isnan(tmp[i]) ? tmp[i] : (std::isnan(m) ? m : std::max(m, tmp[i]));
  }
  return m;
}

// Spreads prefetches of [ptr, ptr + bytes) evenly over `steps` calls of next(): the
// sweeps that only compute fetch the next rows, so memory and the exps overlap instead
// of the next row's loads stalling.
class Prefetcher {
 public:
  Prefetcher(const void* ptr, int64_t bytes, int64_t steps)
      : ptr_(static_cast<const char*>(ptr)),
        end_(ptr != nullptr ? bytes : 0),
        stride_(std::max<int64_t>(64, (bytes / std::max<int64_t>(1, steps) + 63) / 64 * 64)) {}
  void next() {
    for (const int64_t stop = std::min(done_ + stride_, end_); done_ < stop; done_ += 64) {
      __builtin_prefetch(ptr_ + done_);
    }
  }

 private:
  const char* ptr_;
  int64_t end_;
  int64_t stride_;
  int64_t done_ = 0;
};

// One row into buf as z = x / eps + log_u (padding -inf); returns its NaN-propagating max.
template <typename T>
float load_row(const Problem& p, const T* row, float* buf) {
  const Divisor divide(p.epsilon);
  const int64_t padded = p.padded;  // locals: the stores to buf would force reloads
  const int64_t cols = p.cols;
  const float* log_u = p.log_u;
  Vec vmax(-kInf);
  for (int64_t j = 0; j < padded; j += kWidth) {
    const Vec z = load_z(row, j, cols, divide, log_u);
    z.store(buf + j);
    vmax = max_(vmax, z);
  }
  return reduce_max(vmax);
}

// buf <- exp(buf - m) in place; returns the sum (the row's softmax denominator).
// Meanwhile it prefetches the next row (`next`, row_bytes long, or null).
inline float exp_row(float* buf, int64_t padded, float m, const void* next, int64_t row_bytes) {
  const Vec vm(m);
  Vec vsum(0.f);
  Prefetcher prefetch(next, row_bytes, padded / kWidth);
  for (int64_t j = 0; j < padded; j += kWidth) {
    prefetch.next();
    const Vec e = exp_(Vec::loadu(buf + j) - vm);
    e.store(buf + j);
    vsum = vsum + e;
  }
  return lane_sum(vsum);
}

// Plain column statistics of NR rows: per column, the running max lives in stats[0:Kp]
// and the sum of exp(z - shift(max)) in stats[Kp:2Kp]. The rows are streamed one after
// the other into buf as z (one sequential stream), then the column sweep, which
// prefetches the next block's first row meanwhile, reduces the NR rows in registers, so
// the max/shift bookkeeping is paid once per NR elements and the running sum is
// rescaled (one exp) only when a max moved. (Reading the NR rows side by side, or
// prefetching a whole block ahead, measured up to 2x slower.)
template <typename T, int NR>
void plain_block(const Problem& p, const T* rows, bool more, float* buf, float* stats) {
  for (int r = 0; r < NR; ++r) load_row(p, rows + r * p.cols, buf + r * p.padded);
  const int64_t padded = p.padded;
  Prefetcher prefetch(more ? rows + NR * p.cols : nullptr, p.cols * int64_t(sizeof(T)),
                      padded / kWidth);
  float* run_max = stats;
  float* run_sum = stats + padded;
  for (int64_t j = 0; j < padded; j += kWidth) {
    prefetch.next();
    Vec z[NR];
    Vec block_max(-kInf);
    for (int r = 0; r < NR; ++r) {
      z[r] = Vec::loadu(buf + r * padded + j);
      block_max = max_(block_max, z[r]);
    }
    const Vec old_max = Vec::loadu(run_max + j);
    const Vec new_max = max_(old_max, block_max);
    const Vec shift = finite_or_zero(new_max);
    Vec sum = Vec::loadu(run_sum + j);
    if (!all_equal(old_max, new_max)) {
      // An empty sum (old max -inf) stays 0: exp(0 - shift) overflows once the new max
      // is below -88, and 0 * inf would be NaN.
      sum = Vec::blendv(sum * exp_(finite_or_zero(old_max) - shift), sum, sum == Vec(0.f));
      new_max.store(run_max + j);
    }
    Vec block_sum(0.f);
    for (int r = 0; r < NR; ++r) block_sum = block_sum + exp_(z[r] - shift);
    (sum + block_sum).store(run_sum + j);
  }
}

// Row-normalized column sums of NR rows: stats[Kp:2Kp] += sum_r softmax_k(z_r).
// No shift is needed: softmax entries are in [0, 1], so the sums cannot overflow, and
// in the Sinkhorn iteration every column's sum is >= 1/K (see sinkhorn.cpp), so the
// entries that underflow (< 1e-38) are far below its rounding.
template <typename T, int NR>
void normalized_block(const Problem& p, const T* rows, bool more, float* buf, float* stats) {
  float inv_sum[NR];
  for (int r = 0; r < NR; ++r) {
    float* zr = buf + r * p.padded;
    const float m = load_row(p, rows + r * p.cols, zr);
    const T* next = (r + 1 < NR || more) ? rows + (r + 1) * p.cols : nullptr;
    inv_sum[r] = 1.f / exp_row(zr, p.padded, m, next, p.cols * int64_t(sizeof(T)));
  }
  const int64_t padded = p.padded;
  float* col_sum = stats + padded;
  for (int64_t j = 0; j < padded; j += kWidth) {
    Vec acc(0.f);
    for (int r = 0; r < NR; ++r) {
      acc = at::vec::fmadd(Vec::loadu(buf + r * padded + j), Vec(inv_sum[r]), acc);
    }
    (Vec::loadu(col_sum + j) + acc).store(col_sum + j);
  }
}

template <typename T>
void colstats_rows_typed(const Problem& p, int64_t row0, int64_t rows, bool normalize_rows,
                         float* buf, float* stats) {
  std::fill(stats, stats + p.padded, normalize_rows ? 0.f : -kInf);
  std::fill(stats + p.padded, stats + 2 * p.padded, 0.f);
  const T* base = static_cast<const T*>(p.scores) + row0 * p.cols;
  int64_t r = 0;
  for (; r + kBlockRows <= rows; r += kBlockRows) {
    if (normalize_rows) {
      normalized_block<T, kBlockRows>(p, base + r * p.cols, r + kBlockRows < rows, buf, stats);
    } else {
      plain_block<T, kBlockRows>(p, base + r * p.cols, r + kBlockRows < rows, buf, stats);
    }
  }
  for (; r < rows; ++r) {
    if (normalize_rows) {
      normalized_block<T, 1>(p, base + r * p.cols, r + 1 < rows, buf, stats);
    } else {
      plain_block<T, 1>(p, base + r * p.cols, r + 1 < rows, buf, stats);
    }
  }
  if (!normalize_rows) {
    // The running max becomes the stored shift (finite: 0 where the max is not).
    for (int64_t j = 0; j < p.padded; j += kWidth) {
      finite_or_zero(Vec::loadu(stats + j)).store(stats + j);
    }
  }
}

// Codes larger than this are written with non-temporal stores: they cannot stay in cache
// anyway, and streaming skips reading each destination line before writing it (a third
// of the codes pass's memory traffic).
constexpr int64_t kStreamBytes = int64_t(16) << 20;

// dst[0:cols] = buf[0:cols] * scale, the aligned body with non-temporal stores.
inline void write_row_streaming(float* dst, const float* buf, int64_t cols, float scale) {
  const int64_t misaligned =
      int64_t(reinterpret_cast<uintptr_t>(dst) % 64) / int64_t(sizeof(float));
  const int64_t head =
      std::min(cols, misaligned == 0 ? int64_t(0) : 64 / int64_t(sizeof(float)) - misaligned);
  for (int64_t i = 0; i < head; ++i) dst[i] = buf[i] * scale;
  const Vec vs(scale);
  int64_t j = head;
  for (; j + kWidth <= cols; j += kWidth) {
    const Vec v = Vec::loadu(buf + j) * vs;
#if defined(CPU_CAPABILITY_AVX512)
    _mm512_stream_ps(dst + j, __m512(v));
#elif defined(CPU_CAPABILITY_AVX2)
    _mm256_stream_ps(dst + j, __m256(v));
#else
    v.store(dst + j);
#endif
  }
  if (j < cols) (Vec::loadu(buf + j) * vs).store(dst + j, cols - j);
}

// dst[0:n] = src[0:n] * scale (fp32), with non-temporal stores when `stream`.
inline void write_row(float* dst, const float* src, int64_t n, float scale, bool stream) {
  if (stream) {
    write_row_streaming(dst, src, n, scale);
    return;
  }
  const Vec vs(scale);
  int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth) (Vec::loadu(src + j) * vs).store(dst + j);
  if (j < n) (Vec::loadu(src + j) * vs).store(dst + j, n - j);
}

// Whether the (B, K) fp32 output of a pass (the codes, or E) is written with non-temporal
// stores: it is at least kStreamBytes.
inline bool streams(const Problem& p) {
  return p.rows * p.cols * int64_t(sizeof(float)) >= kStreamBytes;
}

template <typename T>
void codes_rows_typed(const Problem& p, int64_t row0, int64_t rows, bool normalize_rows,
                      float plain_scale, float* buf, float* out) {
  const T* base = static_cast<const T*>(p.scores) + row0 * p.cols;
  const bool stream = streams(p);
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = out + (row0 + r) * p.cols;
    const float m = load_row(p, base + r * p.cols, buf);
    float scale = plain_scale;
    if (normalize_rows) {
      const T* next = r + 1 < rows ? base + (r + 1) * p.cols : nullptr;
      scale = 1.f / exp_row(buf, p.padded, m, next, p.cols * int64_t(sizeof(T)));
    } else {
      for (int64_t j = 0; j < p.padded; j += kWidth) exp_(Vec::loadu(buf + j)).store(buf + j);
    }
    write_row(dst, buf, p.cols, scale, stream);
  }
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if (stream) _mm_sfence();  // order the non-temporal stores before the threads join
#endif
}

// ------------------------------------------------------------------------ exp domain

// Pass 0 of one chunk. Two sweeps over its rows: the column max of the raw scores (a
// correctly rounded division by eps > 0 is monotone, so the max of L is the max of x
// divided once), then E = exp(L - m) and its column sums. The second sweep reads the
// chunk again from cache (a chunk is at most 256 rows: 3 MB at K = 3000, L3-resident),
// so DRAM sees one read of the scores and one (streamed) write of E.
template <typename T>
void exp_first_rows_typed(const Problem& p, int64_t row0, int64_t rows, float* buf, float* e,
                          float* stats) {
  const int64_t padded = p.padded;
  const int64_t cols = p.cols;
  float* shift = stats;
  float* sum = stats + padded;
  std::fill(shift, shift + padded, -kInf);
  std::fill(sum, sum + padded, 0.f);
  const T* base = static_cast<const T*>(p.scores) + row0 * cols;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = base + r * cols;
    for (int64_t j = 0; j < padded; j += kWidth) {
      const Vec x =
          j + kWidth <= cols ? load_floats(row + j) : load_floats(row + j, cols - j, -kInf);
      max_(Vec::loadu(shift + j), x).store(shift + j);
    }
  }
  const Divisor divide(p.epsilon);
  for (int64_t j = 0; j < padded; j += kWidth) {
    finite_or_zero(divide(Vec::loadu(shift + j))).store(shift + j);
  }
  const bool stream = streams(p);
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = base + r * cols;
    for (int64_t j = 0; j < padded; j += kWidth) {
      const Vec x =
          j + kWidth <= cols ? load_floats(row + j) : load_floats(row + j, cols - j, -kInf);
      const Vec v = exp_(divide(x) - Vec::loadu(shift + j));
      v.store(buf + j);
      (Vec::loadu(sum + j) + v).store(sum + j);
    }
    write_row(e + (row0 + r) * cols, buf, cols, 1.f, stream);
  }
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if (stream) _mm_sfence();  // order the non-temporal stores before the threads join
#endif
}

// sum_k e[k] * g[k] over k < cols (g is padded, so the tail reads whole vectors of it).
inline float dot_row(const float* e, const float* g, int64_t cols) {
  Vec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
  int64_t j = 0;
  for (; j + 4 * kWidth <= cols; j += 4 * kWidth) {
    a0 = at::vec::fmadd(Vec::loadu(e + j), Vec::loadu(g + j), a0);
    a1 = at::vec::fmadd(Vec::loadu(e + j + kWidth), Vec::loadu(g + j + kWidth), a1);
    a2 = at::vec::fmadd(Vec::loadu(e + j + 2 * kWidth), Vec::loadu(g + j + 2 * kWidth), a2);
    a3 = at::vec::fmadd(Vec::loadu(e + j + 3 * kWidth), Vec::loadu(g + j + 3 * kWidth), a3);
  }
  for (; j + kWidth <= cols; j += kWidth) {
    a0 = at::vec::fmadd(Vec::loadu(e + j), Vec::loadu(g + j), a0);
  }
  if (j < cols) a1 = at::vec::fmadd(Vec::loadu(e + j, cols - j), Vec::loadu(g + j), a1);
  return lane_sum((a0 + a1) + (a2 + a3));
}

// acc[0:Kp] += sum_r inv[r] * e[r, :] for NR rows of e (row stride cols; acc is padded, so
// the tail vector's lanes past cols add 0).
template <int NR>
void accumulate_rows(const float* e, int64_t cols, const float* inv, float* acc) {
  Vec w[NR];
  for (int r = 0; r < NR; ++r) w[r] = Vec(inv[r]);
  int64_t j = 0;
  for (; j + kWidth <= cols; j += kWidth) {
    Vec a = Vec::loadu(acc + j);
    for (int r = 0; r < NR; ++r) a = at::vec::fmadd(Vec::loadu(e + r * cols + j), w[r], a);
    a.store(acc + j);
  }
  if (j < cols) {
    Vec a = Vec::loadu(acc + j);
    for (int r = 0; r < NR; ++r)
      a = at::vec::fmadd(Vec::loadu(e + r * cols + j, cols - j), w[r], a);
    a.store(acc + j);
  }
}

// The row softmax of x = L + log_u of one scores row, in the log domain, into buf
// (padding lanes 0); returns 1 / its denominator (the fallback of rows where E underflowed).
template <typename T>
float softmax_row(const Problem& p, const T* row, float* buf) {
  const float m = load_row(p, row, buf);
  return 1.f / exp_row(buf, p.padded, m, nullptr, 0);
}

// Rows per block of the column accumulation of a middle pass: the block's E rows, just
// read for their row sums, are read again from L2 (at most ~256 KiB of them).
constexpr int64_t kExpBlockBytes = int64_t(256) << 10;

template <typename T>
void exp_pass_rows_typed(const Problem& p, const float* shift, int64_t row0, int64_t rows,
                         bool last, float min_row_sum, float* buf, float* e, float* col_sum) {
  const int64_t padded = p.padded;
  const int64_t cols = p.cols;
  float* g = buf;
  float* fallback = buf + padded;
  float* row_buf = buf + 2 * padded;
  // g = exp(shift + log_u - G): G makes the largest weight 1, so no weight overflows and
  // r_b <= K; a per-chunk constant cancels in every row's softmax.
  for (int64_t j = 0; j < padded; j += kWidth) {
    (Vec::loadu(shift + j) + Vec::loadu(p.log_u + j)).store(g + j);
  }
  float top = -kInf;
  for (int64_t j = 0; j < cols; ++j) top = std::max(top, g[j]);
  const Vec vtop(top);
  for (int64_t j = 0; j < padded; j += kWidth) exp_(Vec::loadu(g + j) - vtop).store(g + j);
  std::fill(g + cols, g + padded, 0.f);
  if (!last) std::fill(col_sum, col_sum + padded, 0.f);
  bool any_fallback = false;
  const T* scores = static_cast<const T*>(p.scores);
  const int64_t block = std::clamp<int64_t>(kExpBlockBytes / (cols * int64_t(sizeof(float))), 1, 8);
  float inv[8];
  for (int64_t r0 = row0; r0 < row0 + rows; r0 += block) {
    const int64_t nr = std::min(block, row0 + rows - r0);
    for (int64_t r = 0; r < nr; ++r) {
      float* er = e + (r0 + r) * cols;
      const float sum = dot_row(er, g, cols);
      if (sum >= min_row_sum) {  // false for NaN
        inv[r] = 1.f / sum;
        if (last) {
          const Vec vinv(inv[r]);
          int64_t j = 0;
          for (; j + kWidth <= cols; j += kWidth) {
            (Vec::loadu(er + j) * Vec::loadu(g + j) * vinv).store(er + j);
          }
          if (j < cols)
            (Vec::loadu(er + j, cols - j) * Vec::loadu(g + j) * vinv).store(er + j, cols - j);
        }
        continue;
      }
      inv[r] = 0.f;
      const float s = softmax_row(p, scores + (r0 + r) * cols, row_buf);
      if (last) {
        const Vec vs(s);
        int64_t j = 0;
        for (; j + kWidth <= cols; j += kWidth) (Vec::loadu(row_buf + j) * vs).store(er + j);
        if (j < cols) (Vec::loadu(row_buf + j) * vs).store(er + j, cols - j);
        continue;
      }
      if (!any_fallback) std::fill(fallback, fallback + padded, 0.f);
      any_fallback = true;
      for (int64_t j = 0; j < padded; j += kWidth) {
        at::vec::fmadd(Vec::loadu(row_buf + j), Vec(s), Vec::loadu(fallback + j))
            .store(fallback + j);
      }
    }
    if (last) continue;
    const float* eb = e + r0 * cols;
    int64_t r = 0;
    for (; r + 8 <= nr; r += 8) accumulate_rows<8>(eb + r * cols, cols, inv + r, col_sum);
    for (; r < nr; ++r) accumulate_rows<1>(eb + r * cols, cols, inv + r, col_sum);
  }
  if (last) return;
  // sum_b P[b, k] = g_k * sum_b E[b, k] / r_b (+ the fallback rows' P).
  for (int64_t j = 0; j < padded; j += kWidth) {
    Vec v = Vec::loadu(col_sum + j) * Vec::loadu(g + j);
    if (any_fallback) v = v + Vec::loadu(fallback + j);
    v.store(col_sum + j);
  }
}

void merge_stats_impl(const float* stats, int64_t chunks, int64_t padded, int64_t col0,
                      int64_t col1, float* out) {
  for (int64_t j = col0; j < col1; j += kWidth) {
    Vec m(-kInf);
    for (int64_t c = 0; c < chunks; ++c) m = max_(m, Vec::loadu(stats + 2 * c * padded + j));
    const Vec shift = finite_or_zero(m);
    Vec sum(0.f);
    for (int64_t c = 0; c < chunks; ++c) {
      const Vec chunk_shift = Vec::loadu(stats + 2 * c * padded + j);
      const Vec chunk_sum = Vec::loadu(stats + (2 * c + 1) * padded + j);
      // Row-normalized stats all have shift 0: skip the exp(0) then.
      sum =
          sum + (all_equal(chunk_shift, shift) ? chunk_sum : chunk_sum * exp_(chunk_shift - shift));
    }
    shift.store(out + j);
    sum.store(out + padded + j);
  }
}

template <typename Fn>
void dispatch_type(InputType type, Fn&& fn) {
  switch (type) {
    case InputType::kFloat:
      fn(float{});
      break;
    case InputType::kHalf:
      fn(c10::Half{});
      break;
    case InputType::kBFloat16:
      fn(c10::BFloat16{});
      break;
  }
}

void colstats_rows(const Problem& p, int64_t row0, int64_t rows, bool normalize_rows, float* buf,
                   float* stats) {
  dispatch_type(p.type, [&](auto tag) {
    colstats_rows_typed<decltype(tag)>(p, row0, rows, normalize_rows, buf, stats);
  });
}

void codes_rows(const Problem& p, int64_t row0, int64_t rows, bool normalize_rows, float scale,
                float* buf, float* out) {
  dispatch_type(p.type, [&](auto tag) {
    codes_rows_typed<decltype(tag)>(p, row0, rows, normalize_rows, scale, buf, out);
  });
}

void exp_first_rows(const Problem& p, int64_t row0, int64_t rows, float* buf, float* e,
                    float* stats) {
  dispatch_type(
      p.type, [&](auto tag) { exp_first_rows_typed<decltype(tag)>(p, row0, rows, buf, e, stats); });
}

void exp_pass_rows(const Problem& p, const float* shift, int64_t row0, int64_t rows, bool last,
                   float min_row_sum, float* buf, float* e, float* col_sum) {
  dispatch_type(p.type, [&](auto tag) {
    exp_pass_rows_typed<decltype(tag)>(p, shift, row0, rows, last, min_row_sum, buf, e, col_sum);
  });
}

}  // namespace

const Kernels& table() {
  static const Kernels kernels{kWidth,      &colstats_rows,  &merge_stats_impl,
                               &codes_rows, &exp_first_rows, &exp_pass_rows};
  return kernels;
}

}  // namespace seer_kernels::cpu::sinkhorn::CPU_CAPABILITY

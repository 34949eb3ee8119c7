// The CPU Sinkhorn row kernels, written once with at::vec::Vectorized<float> and
// compiled per instruction set: include this file after defining CPU_CAPABILITY (and
// CPU_CAPABILITY_AVX2 / CPU_CAPABILITY_AVX512) and enabling the matching target.
// See sinkhorn_kernels.h for the contracts and sinkhorn.cpp for the algorithm.
//
// Per element of a (B, K) pass (fp32 input; bf16/fp16 read 2 bytes instead of 4):
//   colstats, plain (pass 0)   4 B read, 1 div + 1 add + 1 max + 1 exp + 1 add (FLOPs ~
//                              Sleef exp ~ 15 vector ops / 16 lanes); the 8-row block is
//                              rescaled only when a column's running max moves.
//   colstats, normalize_rows   4 B read, then 3 sweeps over an L2-resident row buffer:
//                              z = x / eps + log_u and its max, e = exp(z - max) and its
//                              sum, then column sums of e / sum: 1 exp per element.
//   codes                      4 B read + 4 B write, the same 3 sweeps, 1 exp per element.
// Column accumulators (2 * Kp floats per chunk) and the row buffer (8 * Kp floats)
// stay in L2 for K up to 16k, so DRAM traffic is the scores (and codes) only.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "sinkhorn_kernels.h"

namespace seer_kernels::cpu::sinkhorn {
inline namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kWidth = Vec::size();
constexpr float kInf = std::numeric_limits<float>::infinity();

// W input values at p, as floats.
template <typename T>
inline Vec load_full(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p);
  } else {
    Vec out;
    at::vec::load_to_float<T>(p, out);
    return out;
  }
}

// The last n < W values at p as floats; the other lanes get `fill`.
template <typename T>
inline Vec load_tail(const T* p, int64_t n, float fill) {
  alignas(64) float tmp[kWidth];
  for (int64_t i = 0; i < kWidth; ++i) {
    tmp[i] = i < n ? static_cast<float>(p[i]) : fill;
  }
  return Vec::loadu(tmp);
}

// z = x / eps + log_u for the W columns at j of one row; -inf past the row's end so that
// padding lanes add exp(-inf) = 0 to every sum. Division (not a reciprocal multiply)
// rounds L = x / eps exactly as the reference does.
template <typename T>
inline Vec load_z(const T* row, int64_t j, int64_t cols, const Vec& eps, const float* log_u) {
  const Vec x = j + kWidth <= cols ? load_full(row + j) : load_tail(row + j, cols - j, -kInf);
  return x / eps + Vec::loadu(log_u + j);
}

// m where it is finite, else 0 (the reference's m_safe): x - x is 0 only for finite x.
inline Vec finite_or_zero(const Vec& m) {
  return Vec::blendv(Vec(0.f), m, (m - m) == Vec(0.f));
}

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

inline float reduce_sum(const Vec& v) {
  alignas(64) float tmp[kWidth];
  v.store(tmp);
  float s = 0.f;
  for (int64_t i = 0; i < kWidth; ++i) s += tmp[i];
  return s;
}

// Plain column statistics of NR rows: per column, the running max lives in stats[0:Kp]
// and the sum of exp(z - shift(max)) in stats[Kp:2Kp]. The NR rows are reduced in
// registers first, so the running sum is rescaled (one exp) only when a max moved.
template <typename T, int NR>
void plain_block(const Problem& p, const T* rows, float* stats) {
  const Vec eps(p.epsilon);
  float* run_max = stats;
  float* run_sum = stats + p.padded;
  for (int64_t j = 0; j < p.padded; j += kWidth) {
    Vec z[NR];
    Vec block_max(-kInf);
    for (int r = 0; r < NR; ++r) {
      z[r] = load_z(rows + r * p.cols, j, p.cols, eps, p.log_u);
      block_max = at::vec::maximum(block_max, z[r]);
    }
    const Vec old_max = Vec::loadu(run_max + j);
    const Vec new_max = at::vec::maximum(old_max, block_max);
    const Vec old_shift = finite_or_zero(old_max);
    const Vec new_shift = finite_or_zero(new_max);
    Vec sum = Vec::loadu(run_sum + j);
    if (!all_equal(old_shift, new_shift)) sum = sum * (old_shift - new_shift).exp();
    Vec block_sum(0.f);
    for (int r = 0; r < NR; ++r) block_sum = block_sum + (z[r] - new_shift).exp();
    (sum + block_sum).store(run_sum + j);
    new_max.store(run_max + j);
  }
}

// One row into buf as z = x / eps + log_u (padding -inf); returns its NaN-propagating max.
template <typename T>
float load_row(const Problem& p, const T* row, float* buf) {
  const Vec eps(p.epsilon);
  Vec vmax(-kInf);
  for (int64_t j = 0; j < p.padded; j += kWidth) {
    const Vec z = load_z(row, j, p.cols, eps, p.log_u);
    z.store(buf + j);
    vmax = at::vec::maximum(vmax, z);
  }
  return reduce_max(vmax);
}

// buf <- exp(buf - m) in place; returns the sum (the row's softmax denominator).
inline float exp_row(float* buf, int64_t padded, float m) {
  const Vec vm(m);
  Vec vsum(0.f);
  for (int64_t j = 0; j < padded; j += kWidth) {
    const Vec e = (Vec::loadu(buf + j) - vm).exp();
    e.store(buf + j);
    vsum = vsum + e;
  }
  return reduce_sum(vsum);
}

// Row-normalized column sums of NR rows: stats[Kp:2Kp] += sum_r softmax_k(z_r).
// No shift is needed: softmax entries are in [0, 1], so the sums cannot overflow, and
// in the Sinkhorn iteration every column's sum is >= 1/K (see sinkhorn.cpp), so the
// entries that underflow (< 1e-38) are far below its rounding.
template <typename T, int NR>
void normalized_block(const Problem& p, const T* rows, float* buf, float* stats) {
  float inv_sum[NR];
  for (int r = 0; r < NR; ++r) {
    float* zr = buf + r * p.padded;
    const float m = load_row(p, rows + r * p.cols, zr);
    inv_sum[r] = 1.f / exp_row(zr, p.padded, m);
  }
  float* col_sum = stats + p.padded;
  for (int64_t j = 0; j < p.padded; j += kWidth) {
    Vec acc(0.f);
    for (int r = 0; r < NR; ++r) {
      acc = at::vec::fmadd(Vec::loadu(buf + r * p.padded + j), Vec(inv_sum[r]), acc);
    }
    (Vec::loadu(col_sum + j) + acc).store(col_sum + j);
  }
}

template <typename T>
void colstats_rows_typed(const Problem& p, int64_t row0, int64_t rows, bool normalize_rows, float* buf,
                         float* stats) {
  std::fill(stats, stats + p.padded, normalize_rows ? 0.f : -kInf);
  std::fill(stats + p.padded, stats + 2 * p.padded, 0.f);
  const T* base = static_cast<const T*>(p.scores) + row0 * p.cols;
  int64_t r = 0;
  for (; r + kBlockRows <= rows; r += kBlockRows) {
    if (normalize_rows) {
      normalized_block<T, kBlockRows>(p, base + r * p.cols, buf, stats);
    } else {
      plain_block<T, kBlockRows>(p, base + r * p.cols, stats);
    }
  }
  for (; r < rows; ++r) {
    if (normalize_rows) {
      normalized_block<T, 1>(p, base + r * p.cols, buf, stats);
    } else {
      plain_block<T, 1>(p, base + r * p.cols, stats);
    }
  }
  if (!normalize_rows) {
    // The running max becomes the stored shift (finite: 0 where the max is not).
    for (int64_t j = 0; j < p.padded; j += kWidth) {
      finite_or_zero(Vec::loadu(stats + j)).store(stats + j);
    }
  }
}

template <typename T>
void codes_rows_typed(const Problem& p, int64_t row0, int64_t rows, bool normalize_rows, float plain_scale,
                      float* buf, float* out) {
  const T* base = static_cast<const T*>(p.scores) + row0 * p.cols;
  const int64_t full = p.cols / kWidth * kWidth;
  const int64_t tail = p.cols - full;
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = out + (row0 + r) * p.cols;
    const float m = load_row(p, base + r * p.cols, buf);
    float scale = plain_scale;
    if (normalize_rows) {
      scale = 1.f / exp_row(buf, p.padded, m);
    } else {
      for (int64_t j = 0; j < p.padded; j += kWidth) Vec::loadu(buf + j).exp().store(buf + j);
    }
    const Vec vs(scale);
    for (int64_t j = 0; j < full; j += kWidth) (Vec::loadu(buf + j) * vs).store(dst + j);
    if (tail > 0) (Vec::loadu(buf + full) * vs).store(dst + full, tail);
  }
}

void merge_stats_impl(const float* stats, int64_t chunks, int64_t padded, int64_t col0, int64_t col1,
                      float* out) {
  for (int64_t j = col0; j < col1; j += kWidth) {
    Vec m(-kInf);
    for (int64_t c = 0; c < chunks; ++c) m = at::vec::maximum(m, Vec::loadu(stats + 2 * c * padded + j));
    const Vec shift = finite_or_zero(m);
    Vec sum(0.f);
    for (int64_t c = 0; c < chunks; ++c) {
      const Vec chunk_shift = Vec::loadu(stats + 2 * c * padded + j);
      const Vec chunk_sum = Vec::loadu(stats + (2 * c + 1) * padded + j);
      // Row-normalized stats all have shift 0: skip the exp(0) then.
      sum = sum + (all_equal(chunk_shift, shift) ? chunk_sum : chunk_sum * (chunk_shift - shift).exp());
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

void codes_rows(const Problem& p, int64_t row0, int64_t rows, bool normalize_rows, float scale, float* buf,
                float* out) {
  dispatch_type(p.type, [&](auto tag) {
    codes_rows_typed<decltype(tag)>(p, row0, rows, normalize_rows, scale, buf, out);
  });
}

}  // namespace

const Kernels& table() {
  static const Kernels kernels{kWidth, &colstats_rows, &merge_stats_impl, &codes_rows};
  return kernels;
}

}  // namespace CPU_CAPABILITY
}  // namespace seer_kernels::cpu::sinkhorn

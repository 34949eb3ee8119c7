// Row kernels of the fused SwAV head (prototype scoring + multi-crop cross-entropy), written
// once with ATen's at::vec::Vectorized and compiled once per instruction set by
// prototype_cross_entropy_kernels_{avx512,avx2,default}.cpp (the scheme is in isa.h), so
// every function here lands in seer_kernels::cpu::prototype_cross_entropy::<CPU_CAPABILITY>.
// The contracts are in prototype_cross_entropy_kernels.h; the algorithm, bytes and FLOPs in
// prototype_cross_entropy.cpp.
//
// Per score element the tile kernels cost 2 exp (one for the logsumexp, one for the
// softmax of the gradient) and (A + 5) flops, against 6 D flops in the three GEMMs around
// them: at D = 128 they are a few percent of the work.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "prototype_cross_entropy_kernels.h"
#include "rows.h"  // convert_row, dispatch_row_type, load_floats, lane_sum, lane_max,
                   // load_part, target_at, kLanes, inverse_norm, project_normalized

namespace seer_kernels::cpu::prototype_cross_entropy::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// ------------------------------------------------------------------- normalization

template <typename acc_t>
double normalize_row_acc(const void* src, c10::ScalarType dtype, int64_t d, acc_t* dst,
                         bool normalize) {
  dispatch_row_type(dtype,
                    [&](auto tag) { convert_row(static_cast<const decltype(tag)*>(src), dst, d); });
  if (!normalize) return 1.0;
  const acc_t rn = inverse_norm(dst, d);
  for (int64_t i = 0; i < d; ++i) dst[i] *= rn;
  return static_cast<double>(rn);
}

double normalize_row(const void* src, c10::ScalarType dtype, int64_t d, void* dst, bool normalize,
                     bool f64) {
  if (f64) return normalize_row_acc(src, dtype, d, static_cast<double*>(dst), normalize);
  return normalize_row_acc(src, dtype, d, static_cast<float*>(dst), normalize);
}

// ------------------------------------------------------------------- code row sums

template <typename T>
double sum_as_float(const T* x, int64_t n) {
  using Vec = Vectorized<float>;
  constexpr int64_t w = Vec::size();
  if constexpr (std::is_same_v<T, double>) {
    float s = 0.0f;
    for (int64_t k = 0; k < n; ++k) s += static_cast<float>(x[k]);
    return s;
  } else {
    Vec s0(0.0f), s1(0.0f);
    int64_t k = 0;
    for (; k + 2 * w <= n; k += 2 * w) {
      s0 = s0 + load_floats(x + k);
      s1 = s1 + load_floats(x + k + w);
    }
    for (; k < n; k += w) s0 = s0 + load_floats(x + k, std::min(w, n - k), 0.0f);
    return static_cast<double>(lane_sum(s0 + s1));
  }
}

template <typename T>
double sum_as_double(const T* x, int64_t n) {
  double part[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int j = 0; j < kLanes; ++j) part[j] += static_cast<double>(x[k + j]);
  }
  double s = 0.0;
  for (int j = 0; j < kLanes; ++j) s += part[j];
  for (; k < n; ++k) s += static_cast<double>(x[k]);
  return s;
}

double row_sum(const void* src, c10::ScalarType dtype, int64_t n, bool f64) {
  double out = 0.0;
  dispatch_row_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    out = f64 ? sum_as_double(static_cast<const T*>(src), n)
              : sum_as_float(static_cast<const T*>(src), n);
  });
  return out;
}

// ------------------------------------------------------------------- logsumexp

template <typename acc_t>
void fold_stats_acc(const TileStats& t) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t w = Vec::size();
  const Vec neg_inf(-std::numeric_limits<acc_t>::infinity()), zero(acc_t(0));
  const Vec inv_t(static_cast<acc_t>(t.inv_t));
  for (int64_t r = 0; r < t.rows; ++r) {
    const acc_t* x = static_cast<const acc_t*>(t.scores) + r * t.ld;
    Vec m0 = neg_inf, m1 = neg_inf;
    int64_t k = 0;
    for (; k + 2 * w <= t.cols; k += 2 * w) {
      m0 = at::vec::maximum(m0, Vec::loadu(x + k));
      m1 = at::vec::maximum(m1, Vec::loadu(x + k + w));
    }
    for (; k < t.cols; k += w) {
      const int64_t count = std::min(w, t.cols - k);
      m0 = at::vec::maximum(m0, Vec::set(neg_inf, load_part(x + k, count), count));
    }
    const acc_t m = lane_max(at::vec::maximum(m0, m1));
    const Vec vm(m);
    Vec s0(acc_t(0));
    for (k = 0; k < t.cols; k += w) {
      const int64_t count = std::min(w, t.cols - k);
      const Vec e = ((vm - load_part(x + k, count)) * inv_t).neg().exp();
      s0 = s0 + (count == w ? e : Vec::set(zero, e, count));
    }
    const double mt = static_cast<double>(m), st = static_cast<double>(lane_sum(s0));
    if (t.first) {
      t.m[r] = mt;
      t.s[r] = st;
    } else {
      const double mn = std::max(t.m[r], mt);
      t.s[r] = t.s[r] * std::exp((t.m[r] - mn) * t.inv_t) + st * std::exp((mt - mn) * t.inv_t);
      t.m[r] = mn;
    }
  }
}

void fold_stats(const TileStats& t) {
  if (t.f64)
    fold_stats_acc<double>(t);
  else
    fold_stats_acc<float>(t);
}

// ------------------------------------------------------------------- gradient tile

template <typename acc_t>
void tile_grad_acc(const TileGrad& t) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t w = Vec::size();
  acc_t* seg = static_cast<acc_t*>(t.scratch);
  std::vector<const acc_t*> others(static_cast<size_t>(std::max<int64_t>(t.A, 1)));
  const Vec inv_t(static_cast<acc_t>(t.inv_t)), coef(static_cast<acc_t>(t.coef));
  for (int64_t j = 0; j < t.samples; ++j) {
    const int64_t b = t.b0 + j;
    // The A code segments of sample b, converted once for its V crops.
    for (int64_t a = 0; a < t.A; ++a) {
      const int64_t offset = a * t.code_stride_a + b * t.code_stride_b + t.k0;
      dispatch_row_type(t.codes_dtype, [&](auto tag) {
        using T = decltype(tag);
        convert_row(static_cast<const T*>(t.codes) + offset, seg + a * t.cols, t.cols);
      });
    }
    for (int64_t v = 0; v < t.V; ++v) {
      const int64_t r = j * t.V + v;
      int64_t n_others = 0;
      for (int64_t a = 0; a < t.A; ++a) {
        if (a != v) others[n_others++] = seg + a * t.cols;
      }
      acc_t* x = static_cast<acc_t*>(t.scores) + r * t.ld;
      // The exponent is (x - L) / T with L = T lse carried as L_hi + L_lo: x - L_hi is
      // exact near the row max, however large |lse| is (T = 0.01: |lse| ~ 100).
      const double big_l = t.lse[r] * t.temperature;
      const acc_t l_hi_s = static_cast<acc_t>(big_l);
      const Vec l_hi(l_hi_s), l_lo(static_cast<acc_t>(big_l - static_cast<double>(l_hi_s)));
      const Vec vr(static_cast<acc_t>(t.R[r])), vm(static_cast<acc_t>(t.m[r]));
      Vec gap(acc_t(0));
      for (int64_t k = 0; k < t.cols; k += w) {
        const int64_t count = std::min(w, t.cols - k);
        const Vec xv = load_part(x + k, count);
        const Vec c = target_at(others.data(), n_others, k, count);
        const Vec p = (((xv - l_hi) - l_lo) * inv_t).exp();
        gap = at::vec::fmadd(c, vm - xv, gap);  // padded lanes: c = 0
        const Vec g = at::vec::fmsub(vr, p, c) * coef;
        if (count == w)
          g.store(x + k);
        else
          g.store(x + k, count);
      }
      t.gap[r] += static_cast<double>(lane_sum(gap));
    }
  }
}

void tile_grad(const TileGrad& t) {
  if (t.f64)
    tile_grad_acc<double>(t);
  else
    tile_grad_acc<float>(t);
}

// ------------------------------------------------------------------- projection

template <typename T, typename acc_t>
void project_typed(const acc_t* g, const T* x, int64_t d, double rn, T* dst, bool normalize) {
  if (normalize)
    project_normalized(g, x, rn, dst, d);
  else
    convert_row(g, dst, d);
}

void project_row(const void* g, const void* x, c10::ScalarType dtype, int64_t d, double rn,
                 void* dst, bool normalize, bool f64) {
  dispatch_row_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (f64) {
      project_typed(static_cast<const double*>(g), static_cast<const T*>(x), d, rn,
                    static_cast<T*>(dst), normalize);
    } else {
      project_typed(static_cast<const float*>(g), static_cast<const T*>(x), d, rn,
                    static_cast<T*>(dst), normalize);
    }
  });
}

// ------------------------------------------------------------------- partial sums

template <typename acc_t>
void sum_parts_acc(const acc_t* src, int64_t parts, int64_t stride, int64_t n, acc_t* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = src[j];
  for (int64_t i = 1; i < parts; ++i) {
    const acc_t* part = src + i * stride;
    for (int64_t j = 0; j < n; ++j) out[j] += part[j];
  }
}

void sum_parts(const void* src, int64_t parts, int64_t stride, int64_t n, void* out, bool f64) {
  if (f64)
    sum_parts_acc(static_cast<const double*>(src), parts, stride, n, static_cast<double*>(out));
  else
    sum_parts_acc(static_cast<const float*>(src), parts, stride, n, static_cast<float*>(out));
}

}  // namespace

const Kernels& table() {
  static const Kernels kernels{&normalize_row, &row_sum,     &fold_stats,
                               &tile_grad,     &project_row, &sum_parts};
  return kernels;
}

}  // namespace seer_kernels::cpu::prototype_cross_entropy::CPU_CAPABILITY

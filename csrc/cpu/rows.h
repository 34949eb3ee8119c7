// Row helpers shared by the CPU row kernels (<op>_kernels_impl.h): rows of fp16, bf16,
// fp32 or fp64 read as the accumulation type and results written back in the tensor's
// dtype, the fixed-order horizontal sum and max, the SwAV target C_v, and the row norm
// and its backward. Written with at::vec and plain loops, so it is compiled once per ISA
// unit (isa.h) and lands in that unit's namespace: include it after isa.h.
//
// Conversions move 2 (fp16/bf16) or 4 bytes in and 4 out per element; the reduced-float
// paths are ATen's vector conversions (F16C / AVX-512 shifts where the unit has them),
// rounding to nearest even like c10::Half and c10::BFloat16.
#pragma once

#ifndef CPU_CAPABILITY
#error "include isa.h (with SEER_ISA_*) before rows.h"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace seer_kernels::cpu {
inline namespace CPU_CAPABILITY {

// One vector's worth (Vectorized<float>::size()) of values at p, as floats.
template <typename T>
inline at::vec::Vectorized<float> load_floats(const T* p) {
  using Vec = at::vec::Vectorized<float>;
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p);
  } else {
    Vec out;
    at::vec::load_to_float<T>(p, out);
    return out;
  }
}

// The n < Vectorized<float>::size() values at p as floats; the other lanes get `fill`.
template <typename T>
inline at::vec::Vectorized<float> load_floats(const T* p, int64_t n, float fill) {
  using Vec = at::vec::Vectorized<float>;
  alignas(64) float tmp[Vec::size()];
  for (int64_t i = 0; i < Vec::size(); ++i) {
    tmp[i] = i < n ? static_cast<float>(p[i]) : fill;
  }
  return Vec::loadu(tmp);
}

// dst[0:n] = src[0:n] converted. fp16/bf16 <-> fp32 vector by vector; every other pair
// (fp64 accumulation of any input, fp32 -> fp32) is a plain cast loop.
template <typename src_t, typename dst_t>
void convert_row(const src_t* src, dst_t* dst, int64_t n) {
  using Vec = at::vec::Vectorized<float>;
  int64_t k = 0;
  if constexpr (std::is_same_v<dst_t, float> && at::vec::is_reduced_floating_point_v<src_t>) {
    for (; k + Vec::size() <= n; k += Vec::size()) load_floats(src + k).store(dst + k);
  } else if constexpr (std::is_same_v<src_t, float> &&
                       at::vec::is_reduced_floating_point_v<dst_t>) {
    constexpr int64_t w = at::vec::Vectorized<dst_t>::size();  // two float vectors
    for (; k + w <= n; k += w) {
      at::vec::convert_from_float<dst_t>(Vec::loadu(src + k), Vec::loadu(src + k + w / 2))
          .store(dst + k);
    }
  }
  for (; k < n; ++k) dst[k] = static_cast<dst_t>(src[k]);
}

// The row as acc_t: the row itself when it already is acc_t, else converted into buf.
template <typename acc_t, typename src_t>
const acc_t* row_as(const src_t* row, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<src_t, acc_t>) {
    return row;
  } else {
    convert_row(row, buf, n);
    return buf;
  }
}

// Where to compute an output row of acc_t values: in place when the output is acc_t,
// else in buf (then written by store_row).
template <typename out_t, typename acc_t>
acc_t* out_or_buf(out_t* row, acc_t* buf) {
  if constexpr (std::is_same_v<out_t, acc_t>) {
    return row;
  } else {
    return buf;
  }
}

// Writes a row computed at out_or_buf(row, buf) into row (nothing to do when in place).
template <typename out_t, typename acc_t>
void store_row(const acc_t* computed, out_t* row, int64_t n) {
  if constexpr (!std::is_same_v<out_t, acc_t>) {
    convert_row(computed, row, n);
  }
}

// The sum of a vector's lanes in lane order: the same bits for a given ISA, whatever
// the thread count.
template <typename T>
T lane_sum(const at::vec::Vectorized<T>& v) {
  alignas(64) T lanes[at::vec::Vectorized<T>::size()];
  v.store(lanes);
  T s = 0;
  for (const T x : lanes) s += x;
  return s;
}

// The largest of a vector's lanes, taken in lane order.
template <typename T>
T lane_max(const at::vec::Vectorized<T>& v) {
  alignas(64) T lanes[at::vec::Vectorized<T>::size()];
  v.store(lanes);
  T m = lanes[0];
  for (const T x : lanes) m = std::max(m, x);
  return m;
}

// The vector at x[0:count] (count <= Vectorized<T>::size()), zero padded past count.
template <typename T>
at::vec::Vectorized<T> load_part(const T* x, int64_t count) {
  using Vec = at::vec::Vectorized<T>;
  return count == Vec::size() ? Vec::loadu(x) : Vec::loadu(x, count);
}

// sum_j rows[j][k:k + count] (zero padded past count), added in j order: the SwAV target
// C_v at k, the sum of the code rows of the crops other than v.
template <typename T>
at::vec::Vectorized<T> target_at(const T* const* rows, int64_t n_rows, int64_t k, int64_t count) {
  at::vec::Vectorized<T> c(T(0));
  for (int64_t j = 0; j < n_rows; ++j) c = c + load_part(rows[j] + k, count);
  return c;
}

// Row reductions below are plain loops over kLanes independent partial sums, which GCC
// vectorizes for the unit's ISA; the lanes fix the order of the sum for a given n.
constexpr int kLanes = 16;

// <x, x> in the accumulation type.
template <typename acc_t>
acc_t sum_squares(const acc_t* x, int64_t n) {
  acc_t part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) part[k] += x[i + k] * x[i + k];
  }
  acc_t s = 0;
  for (int k = 0; k < kLanes; ++k) s += part[k];
  for (; i < n; ++i) s += x[i] * x[i];
  return s;
}

// rn = 1 / max(||x||, 1e-12), the row's inverse norm (x_hat = x rn), in the accumulation type.
template <typename acc_t>
acc_t inverse_norm(const acc_t* x, int64_t n) {
  return acc_t(1) / std::max(std::sqrt(sum_squares(x, n)), static_cast<acc_t>(1e-12));
}

// ||x||^2 and <x, g> in fp64 (kLanes partial sums each): products of fp32 values are exact
// in fp64, so the projection below cancels exactly where g is parallel to x (D = 1: the
// true gradient is 0; fp32 row scalars leave a few ulp of |g| rn).
template <typename x_t, typename g_t>
std::pair<double, double> sumsq_and_dot_f64(const x_t* x, const g_t* g, int64_t n) {
  double ss[kLanes] = {}, dot[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const double xv = static_cast<double>(x[i + k]);
      ss[k] += xv * xv;
      dot[k] += xv * static_cast<double>(g[i + k]);
    }
  }
  double s = 0, t = 0;
  for (int k = 0; k < kLanes; ++k) {
    s += ss[k];
    t += dot[k];
  }
  for (; i < n; ++i) {
    const double xv = static_cast<double>(x[i]);
    s += xv * xv;
    t += xv * static_cast<double>(g[i]);
  }
  return {s, t};
}

// The normalization's backward for one row: given g = d loss / d x_hat (x_hat = x rn),
// out = rn (g - x_hat <x_hat, g>) where ||x|| >= 1e-12, else rn g. x_hat <x_hat, g> is
// formed as x <x, g> / ||x||^2 (no rounding of rn^2); each element is evaluated in fp64
// and rounded once. out may alias g when the types agree.
template <typename g_t, typename x_t, typename out_t>
void project_normalized(const g_t* g, const x_t* x, double rn, out_t* out, int64_t n) {
  const auto [ss, dot] = sumsq_and_dot_f64(x, g, n);
  const double c = std::sqrt(ss) >= 1e-12 ? dot / ss : 0.0;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<out_t>(rn * (static_cast<double>(g[i]) - static_cast<double>(x[i]) * c));
  }
}

// fn(T{}) for a row dtype: fp64, fp16, bf16, else fp32 (each op rejects every other
// dtype before its rows get here).
template <typename Fn>
inline void dispatch_row_type(c10::ScalarType t, Fn&& fn) {
  switch (t) {
    case c10::ScalarType::Double:
      fn(double{});
      break;
    case c10::ScalarType::Half:
      fn(c10::Half{});
      break;
    case c10::ScalarType::BFloat16:
      fn(c10::BFloat16{});
      break;
    default:
      fn(float{});
      break;
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace seer_kernels::cpu

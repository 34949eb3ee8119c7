// Row conversions shared by the CPU row kernels (<op>_kernels_impl.h): rows of fp16, bf16,
// fp32 or fp64 read as the accumulation type and results written back in the tensor's
// dtype, plus the fixed-order horizontal sum. Written with at::vec, so it is compiled once
// per ISA unit (isa.h) and lands in that unit's namespace: include it after isa.h.
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

#include <cstdint>
#include <type_traits>

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

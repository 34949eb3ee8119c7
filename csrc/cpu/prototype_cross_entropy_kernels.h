// Interface between the fused SwAV head op (prototype_cross_entropy.cpp: tensors, checks,
// blocking, the GEMMs, threading) and its row kernels, compiled once per instruction set
// (prototype_cross_entropy_kernels_impl.h included by
// prototype_cross_entropy_kernels_{avx512,avx2,default}.cpp, the scheme of isa.h). Only raw
// pointers cross this boundary, so the ISA units include no tensor headers.
//
// Every kernel works in the accumulation type acc_t (csrc/numeric.h: double for double
// input, float otherwise), chosen by the f64 flag of its arguments.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace seer_kernels::cpu::prototype_cross_entropy {

// One operand row in, normalized: dst[0:d] (acc_t) = src * rn with rn = 1/max(||src||,
// 1e-12) (rounded like F.normalize's in acc_t), or src and rn = 1 when !normalize. src has
// dtype `dtype`. Returns rn.
using NormalizeRow = double (*)(const void* src, c10::ScalarType dtype, int64_t d, void* dst,
                                bool normalize, bool f64);

// sum_k src[k] of a row of dtype `dtype`, in acc_t lanes, returned as double.
using RowSum = double (*)(const void* src, c10::ScalarType dtype, int64_t n, bool f64);

// One (rows, cols) tile of scores (acc_t, row stride ld) folded into the running per-row
// statistics of a group of tiles: m[r] = max_k x, s[r] = sum_k exp((x - m[r]) / T). `first`
// starts the running values; later tiles rescale them to the new max (double).
struct TileStats {
  const void* scores;
  int64_t rows, cols, ld;
  double inv_t;
  double* m;
  double* s;
  bool first;
  bool f64;
};
using FoldStats = void (*)(const TileStats& t);

// The gradient of one score tile, in place: row r = (sample j, crop v) = j * V + v of the
// block, columns [k0, k0 + cols) of the K prototypes:
//   x <- coef (R_v[b] exp(x / T - lse[r]) - C_v[b])    with C_v[b] = sum_{a < A, a != v} codes[a,
//   b]
// and gap[r] += <C_v[b], m[r] - x> over the tile (the loss in the reference's
// cancellation-free form: lse R - <C, x> / T = R log(s) + <C, m - x> / T).
// codes[a, b, k] is at codes + a * code_stride_a + b * code_stride_b + k (elements, dtype
// codes_dtype); `scratch` holds A * cols acc_t values (the A code segments of one sample,
// converted once and read by its V crops).
struct TileGrad {
  void* scores;
  int64_t samples, V, A, cols, ld;
  int64_t b0, k0;  // first sample of the block, first column of the tile
  const void* codes;
  c10::ScalarType codes_dtype;
  int64_t code_stride_a, code_stride_b;
  const double* lse;  // per block row, logsumexp_k x / T
  const double* m;    // per block row, max_k x
  const double* R;    // per block row, R_v[b]
  double inv_t, temperature, coef;
  double* gap;  // per block row, accumulated
  void* scratch;
  bool f64;
};
using TileGradFn = void (*)(const TileGrad& t);

// dst = the gradient of x / max(||x||, eps) for a row x of dtype `dtype` (d values) whose
// normalized copy received the gradient g (acc_t): rn (g - x <x, g> / ||x||^2), or rn g
// where ||x|| < eps (the exact gradient of the clamp); dst = g when !normalize. dst has
// dtype `dtype`. Row sums and the update run in double, as prototype_scores' projection.
using ProjectRow = void (*)(const void* g, const void* x, c10::ScalarType dtype, int64_t d,
                            double rn, void* dst, bool normalize, bool f64);

// out[0:n] (acc_t) = sum_{i < parts} src[i * stride + j], in increasing i.
using SumParts = void (*)(const void* src, int64_t parts, int64_t stride, int64_t n, void* out,
                          bool f64);

struct Kernels {
  NormalizeRow normalize_row;
  RowSum row_sum;
  FoldStats fold_stats;
  TileGradFn tile_grad;
  ProjectRow project_row;
  SumParts sum_parts;
};

const Kernels& kernels_avx512();
const Kernels& kernels_avx2();
const Kernels& kernels_default();

}  // namespace seer_kernels::cpu::prototype_cross_entropy

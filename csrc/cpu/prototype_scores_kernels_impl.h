// The row passes of the CPU prototype scores (normalization, gradient projection),
// written once as plain loops and compiled per instruction set by
// prototype_scores_kernels_{avx512,avx2,default}.cpp (the scheme is in isa.h). The
// contracts are in prototype_scores_kernels.h; the math, bytes and FLOPs in
// prototype_scores.cpp.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "../numeric.h"
#include "prototype_scores_kernels.h"
#include "rows.h"  // row_as, out_or_buf, store_row, inverse_norm, project_normalized

namespace seer_kernels::cpu::prototype_scores::CPU_CAPABILITY {
namespace {

// out[i] = x[i] * s.
template <typename acc_t>
void scale(const acc_t* x, acc_t s, acc_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = x[i] * s;
  }
}

// x_hat = x * rn for one row. compute_rn: first rn = 1/max(||x||, eps) (forward); else the
// saved rn (backward). buf: 2 d scratch values of the accumulation type.
template <typename scalar_t>
void normalize_row(const scalar_t* x, int64_t d, acc_type<scalar_t>& rn, gemm_type<scalar_t>* x_hat,
                   bool compute_rn, acc_type<scalar_t>* buf) {
  using acc_t = acc_type<scalar_t>;
  const acc_t* xr = row_as<acc_t>(x, d, buf);
  if (compute_rn) {
    rn = inverse_norm(xr, d);
  }
  acc_t* out = out_or_buf(x_hat, buf + d);
  scale(xr, rn, out, d);
  store_row(out, x_hat, d);
}

// d_x = rn (d_y - x_hat <x_hat, d_y>) (||x|| >= eps) or rn d_y (||x|| < eps) for one row.
// d_y has the GEMM type, d_x the input type (may alias d_y when the types agree).
// buf: 3 d scratch values of the accumulation type.
template <typename scalar_t>
void project_row(const gemm_type<scalar_t>* d_y, const scalar_t* x, acc_type<scalar_t> rn,
                 int64_t d, scalar_t* d_x, acc_type<scalar_t>* buf) {
  using acc_t = acc_type<scalar_t>;
  const acc_t* xr = row_as<acc_t>(x, d, buf);
  const acc_t* dr = row_as<acc_t>(d_y, d, buf + d);
  acc_t* out = out_or_buf(d_x, buf + 2 * d);
  project_normalized(dr, xr, rn, out, d);
  store_row(out, d_x, d);
}

// Row i of the pass: its operand (0: embeddings, 1: prototypes) and its row there.
inline std::pair<int, int64_t> locate(const RowPass& pass, int64_t i) {
  const int op = i < pass.rows[0] ? 0 : 1;
  return {op, i - op * pass.rows[0]};
}

template <typename scalar_t>
void normalize_chunk(const RowPass& pass, int64_t begin, int64_t end) {
  using acc_t = acc_type<scalar_t>;
  using gemm_t = gemm_type<scalar_t>;
  const int64_t d = pass.d;
  std::vector<acc_t> buf(2 * d);
  for (int64_t i = begin; i < end; ++i) {
    const auto [op, r] = locate(pass, i);
    normalize_row<scalar_t>(
        static_cast<const scalar_t*>(pass.x[op]) + r * d, d, static_cast<acc_t*>(pass.rn[op])[r],
        static_cast<gemm_t*>(pass.x_hat[op]) + r * d, pass.compute_rn, buf.data());
  }
}

template <typename scalar_t>
void project_chunk(const RowPass& pass, int64_t begin, int64_t end) {
  using acc_t = acc_type<scalar_t>;
  using gemm_t = gemm_type<scalar_t>;
  const int64_t d = pass.d;
  std::vector<acc_t> buf(3 * d);
  for (int64_t i = begin; i < end; ++i) {
    const auto [op, r] = locate(pass, i);
    project_row<scalar_t>(static_cast<const gemm_t*>(pass.d_hat[op]) + r * d,
                          static_cast<const scalar_t*>(pass.x[op]) + r * d,
                          static_cast<const acc_t*>(pass.rn[op])[r], d,
                          static_cast<scalar_t*>(pass.d_x[op]) + r * d, buf.data());
  }
}

void normalize_rows(const RowPass& pass, int64_t begin, int64_t end) {
  dispatch_row_type(pass.dtype,
                    [&](auto tag) { normalize_chunk<decltype(tag)>(pass, begin, end); });
}

void project_rows(const RowPass& pass, int64_t begin, int64_t end) {
  dispatch_row_type(pass.dtype, [&](auto tag) { project_chunk<decltype(tag)>(pass, begin, end); });
}

}  // namespace

const Kernels& table() {
  static const Kernels kernels{&normalize_rows, &project_rows};
  return kernels;
}

}  // namespace seer_kernels::cpu::prototype_scores::CPU_CAPABILITY

// Row kernels of the SwAV multi-crop cross-entropy, written once with ATen's
// at::vec::Vectorized and compiled once per instruction set by
// swav_cross_entropy_kernels_{avx512,avx2,default}.cpp (the scheme is in isa.h), so every
// function here lands in seer_kernels::cpu::swav_cross_entropy::<CPU_CAPABILITY> and the
// units never share a symbol (no ODR clash between the instruction sets).
//
// Work per b (rows of one sample are processed together so that the A code rows, read
// once from memory, stay in L1/L2 while all V crops use them):
//   forward   codes[:, b] read once (A K elements), r_a = sum_k codes[a, b, k];
//             per crop v: pass 1 over scores[v, b] (max), pass 2 on the row still in L1
//             (sum exp((x - max) / T) and <C_v, max - x>, with C_v = sum_{a != v}
//             codes[a, b] built in registers); writes one lse per (v, b), one partial
//             loss per b.
//   backward  codes[:, b] and scores[v, b] read once, grad[v, b] written once:
//             grad = (R_v exp(x / T - lse) - C_v) * scale.
// Bytes (e = element size): forward V B K e_s + A B K e_c + 8 V B (lse) + 8 B (partials);
// backward 2 V B K e_s + A B K e_c + 8 V B. FLOPs: forward V B K (1 exp + (A + 3) flops),
// backward V B K (1 exp + (A + 3) flops), plus A B K adds for the row sums r_a each way.
// Nothing of size V x A x B x K, or even V x B x K besides the gradient, is ever formed.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>
#include <vector>

#include "rows.h"  // row_as, convert_row, lane_sum, lane_max, load_part, target_at
#include "swav_cross_entropy_kernels.h"

namespace seer_kernels::cpu::swav_cross_entropy::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Row `row` (length n) of a contiguous tensor of dtype `dtype`, as acc_t: the tensor's
// own memory when it already is acc_t, else converted into `scratch` (rows.h).
template <typename acc_t>
const acc_t* row_as(const void* base, c10::ScalarType dtype, int64_t row, int64_t n,
                    acc_t* scratch) {
  switch (dtype) {
    case c10::ScalarType::Float:
      return cpu::row_as<acc_t>(static_cast<const float*>(base) + row * n, n, scratch);
    case c10::ScalarType::Double:
      return cpu::row_as<acc_t>(static_cast<const double*>(base) + row * n, n, scratch);
    case c10::ScalarType::Half:
      return cpu::row_as<acc_t>(static_cast<const c10::Half*>(base) + row * n, n, scratch);
    default:  // BFloat16; the op rejects every other dtype before getting here.
      return cpu::row_as<acc_t>(static_cast<const c10::BFloat16*>(base) + row * n, n, scratch);
  }
}

template <typename acc_t>
void write_row(const acc_t* src, void* base, c10::ScalarType dtype, int64_t row, int64_t n) {
  switch (dtype) {
    case c10::ScalarType::Float:
      convert_row(src, static_cast<float*>(base) + row * n, n);
      return;
    case c10::ScalarType::Double:
      convert_row(src, static_cast<double*>(base) + row * n, n);
      return;
    case c10::ScalarType::Half:
      convert_row(src, static_cast<c10::Half*>(base) + row * n, n);
      return;
    default:
      convert_row(src, static_cast<c10::BFloat16*>(base) + row * n, n);
      return;
  }
}

// r = sum_k x[k]; two accumulators so consecutive adds do not wait on each other.
template <typename acc_t>
acc_t row_sum(const acc_t* x, int64_t n) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t w = Vec::size();
  Vec s0(acc_t(0)), s1(acc_t(0));
  int64_t k = 0;
  for (; k + 2 * w <= n; k += 2 * w) {
    s0 = s0 + Vec::loadu(x + k);
    s1 = s1 + Vec::loadu(x + k + w);
  }
  for (; k < n; k += w) s0 = s0 + Vec::loadu(x + k, std::min(w, n - k));  // zero padded
  return lane_sum(s0 + s1);
}

struct RowStats {
  double lse;   // logsumexp_k x[k] / T
  double term;  // R log(s) + <C_v, m - x> / T: the row's loss, lse R - <C_v, x> / T
};

// Pass 1 (max) and pass 2 (sum of exp, target dot) over one crop row x, in L1 by pass 2.
// The loss is formed as the reference forms it, from the non-negative gaps m - x[k]:
// lse R - <C, x> / T = R log(s) + <C, m - x> / T, so no two large numbers cancel.
template <typename acc_t>
RowStats row_stats(const acc_t* x, const acc_t* const* others, int64_t n_others, int64_t n,
                   double T, double R) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t w = Vec::size();
  const Vec neg_inf(-std::numeric_limits<acc_t>::infinity());
  Vec m0 = neg_inf, m1 = neg_inf;
  int64_t k = 0;
  for (; k + 2 * w <= n; k += 2 * w) {
    m0 = at::vec::maximum(m0, Vec::loadu(x + k));
    m1 = at::vec::maximum(m1, Vec::loadu(x + k + w));
  }
  for (; k < n; k += w)
    m0 = at::vec::maximum(m0, Vec::set(neg_inf, Vec::loadu(x + k, n - k), n - k));
  const acc_t m = lane_max(at::vec::maximum(m0, m1));
  const Vec vm(m), inv_t(static_cast<acc_t>(1.0 / T)), zero(acc_t(0));
  Vec vs(acc_t(0)), vd(acc_t(0));
  for (k = 0; k < n; k += w) {
    const int64_t count = std::min(w, n - k);
    const Vec gap = vm - load_part(x + k, count);
    const Vec e = (gap * inv_t).neg().exp();
    vs = vs + (count == w ? e : Vec::set(zero, e, count));
    vd = at::vec::fmadd(target_at(others, n_others, k, count), gap, vd);  // padded C is 0
  }
  const double log_s = std::log(static_cast<double>(lane_sum(vs)));
  return {static_cast<double>(m) / T + log_s, R * log_s + static_cast<double>(lane_sum(vd)) / T};
}

// Per-thread buffers: the A code rows and one scores row as acc_t (used only for
// inputs of another dtype), one gradient row (only when grad is not acc_t).
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> codes, row, grad;
  std::vector<const acc_t*> code_rows, others;
  std::vector<double> r;
  Scratch(const Problem& p)
      : codes(p.A * p.K), row(p.K), grad(p.K), code_rows(p.A), others(p.A), r(p.A) {}

  // Loads the A code rows of sample b and their sums r_a.
  void load_codes(const Problem& p, int64_t b) {
    for (int64_t a = 0; a < p.A; ++a) {
      code_rows[a] =
          row_as<acc_t>(p.codes, p.codes_dtype, a * p.B + b, p.K, codes.data() + a * p.K);
      r[a] = static_cast<double>(row_sum(code_rows[a], p.K));
    }
  }

  // Points `others` at the code rows a != v; returns their count and sets R_v.
  int64_t select_others(const Problem& p, int64_t v, double& R) {
    int64_t n = 0;
    R = 0.0;
    for (int64_t a = 0; a < p.A; ++a) {
      if (a == v) continue;
      others[n++] = code_rows[a];
      R += r[a];
    }
    return n;
  }
};

template <typename acc_t>
void forward_rows(const Problem& p, void* lse_out, double* terms, int64_t b0, int64_t b1) {
  Scratch<acc_t> s(p);
  double* lse = static_cast<double*>(lse_out);
  for (int64_t b = b0; b < b1; ++b) {
    s.load_codes(p, b);
    double term = 0.0;
    for (int64_t v = 0; v < p.V; ++v) {
      double R = 0.0;
      const int64_t n_others = s.select_others(p, v, R);
      const acc_t* x = row_as<acc_t>(p.scores, p.scores_dtype, v * p.B + b, p.K, s.row.data());
      const RowStats st = row_stats(x, s.others.data(), n_others, p.K, p.temperature, R);
      lse[v * p.B + b] = st.lse;
      term += st.term;
    }
    terms[b] = term;
  }
}

// out[k] = (R exp(x[k] / T - lse) - C_v[k]) * scale over one row. The exponent is
// formed as (x - L) / T with L = T lse = m + T log(s) carried as two acc_t values
// (L_hi + L_lo): x - L_hi is exact near the row maximum, so the largest probabilities
// are as accurate as the reference's, although |lse| may be large (T = 0.01: 100).
template <typename acc_t>
void grad_row(const acc_t* x, const acc_t* const* others, int64_t n_others, int64_t n, double T,
              double lse, double R, double scale, acc_t* out) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t w = Vec::size();
  const double L = lse * T;
  const acc_t L_hi = static_cast<acc_t>(L);
  const Vec l_hi(L_hi), l_lo(static_cast<acc_t>(L - static_cast<double>(L_hi)));
  const Vec inv_t(static_cast<acc_t>(1.0 / T)), vr(static_cast<acc_t>(R)),
      vs(static_cast<acc_t>(scale));
  for (int64_t k = 0; k < n; k += w) {
    const int64_t count = std::min(w, n - k);
    const Vec xv = load_part(x + k, count);
    const Vec p = (((xv - l_hi) - l_lo) * inv_t).exp();
    const Vec g = at::vec::fmsub(vr, p, target_at(others, n_others, k, count)) * vs;
    if (count == w)
      g.store(out + k);
    else
      g.store(out + k, count);
  }
}

template <typename acc_t>
void backward_rows(const Problem& p, const void* lse_in, double scale, void* grad, int64_t b0,
                   int64_t b1) {
  Scratch<acc_t> s(p);
  const double* lse = static_cast<const double*>(lse_in);
  const bool direct = p.scores_dtype == c10::CppTypeToScalarType<acc_t>::value;
  for (int64_t b = b0; b < b1; ++b) {
    s.load_codes(p, b);
    for (int64_t v = 0; v < p.V; ++v) {
      double R = 0.0;
      const int64_t n_others = s.select_others(p, v, R);
      const int64_t row = v * p.B + b;
      const acc_t* x = row_as<acc_t>(p.scores, p.scores_dtype, row, p.K, s.row.data());
      acc_t* out = direct ? static_cast<acc_t*>(grad) + row * p.K : s.grad.data();
      grad_row(x, s.others.data(), n_others, p.K, p.temperature, lse[row], R, scale, out);
      if (!direct) write_row(out, grad, p.scores_dtype, row, p.K);
    }
  }
}

// Double scores accumulate in double (gradcheck); everything else in float.
void forward(const Problem& p, void* lse, double* terms, int64_t b0, int64_t b1) {
  if (p.scores_dtype == c10::ScalarType::Double)
    forward_rows<double>(p, lse, terms, b0, b1);
  else
    forward_rows<float>(p, lse, terms, b0, b1);
}

void backward(const Problem& p, const void* lse, double scale, void* grad, int64_t b0, int64_t b1) {
  if (p.scores_dtype == c10::ScalarType::Double)
    backward_rows<double>(p, lse, scale, grad, b0, b1);
  else
    backward_rows<float>(p, lse, scale, grad, b0, b1);
}

}  // namespace

const Kernels& table() {
  static const Kernels kernels{&forward, &backward};
  return kernels;
}

}  // namespace seer_kernels::cpu::swav_cross_entropy::CPU_CAPABILITY

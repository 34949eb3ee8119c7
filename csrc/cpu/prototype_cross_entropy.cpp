// The fused SwAV head on the CPU: prototype scoring and the multi-crop swapped-prediction
// cross-entropy in one op, without the (V B, K) score matrix: the ops
// seer_kernels::prototype_cross_entropy and seer_kernels::prototype_cross_entropy_backward.
//
// E (V, B, D) embeddings, P (K, D) prototypes, codes (A, B, K); x_hat = x / max(||x||, 1e-12)
// per row (x when !normalize); s[v, b, k] = <e_hat[v, b], p_hat[k]>. With lse = logsumexp_k
// s / T, C_v[b] = sum_{a < A, a != v} codes[a, b], R_v[b] = sum_k C_v[b, k]:
//   loss = sum_{v, b} (R_v[b] lse[v, b] - <C_v[b], s[v, b]> / T) / (A (V - 1) B)
//   G[v, b] = d loss / d s[v, b] = (R_v[b] softmax(s[v, b] / T) - C_v[b]) / (T A (V - 1) B)
//   d loss / d e_hat = G P_hat,  d loss / d p_hat = G^T E_hat,  then the normalization's
//   backward per row (the projection of prototype_scores).
//
// Design: Liger's fused linear cross-entropy. The gradient is computed in the forward and
// the backward op only scales it by the incoming grad_loss, so the three GEMMs of the
// unfused composition (scores, G P, G^T E) stay three, and no (V B, K) array is written:
//   - E_hat (B V rows, sample-major, so a block's V crops of one sample share their codes)
//     and P_hat are normalized copies in the accumulation type (fp32; fp64 for fp64).
//   - Blocks of `nb` samples (rows = nb V) go one after the other. The K prototypes are cut
//     into tiles of kt columns, the tiles into at most kMaxGroups groups; each group is
//     one task of run_tasks (below). Per block:
//       region 1, per tile: S = E_blk P_tile^T (one GEMM into the block buffer), and the
//         running (max, sum exp) of each row over the group's tiles;
//       combine: lse and the row max, groups merged in index order;
//       region 2, per tile: G in place of S and the loss's <C, max - s> (tile_grad), then
//         grad_P_hat[tile] += G^T E_blk (the tile's rows belong to this task alone) and
//         the group's grad_E_hat partial += G P_tile;
//       combine: the groups' grad_E_hat partials, summed in index order.
//   - Last, both gradients are projected through the normalization into the input dtype.
//   Every sum has an order fixed by the shapes (tile and group sizes depend on K only,
//   block sizes on K and V), and each GEMM of a task runs single-threaded (MKL inside an
//   OpenMP region), so the loss and gradients are the same bits for any thread count
//   (tests/test_prototype_cross_entropy.py checks 1 against 2 threads).
// Bytes: E, P and codes are read once per block (P_hat twice, grad_P_hat read and written
// once); per block 3 K D acc values of traffic plus the block's A nb K codes. FLOPs: 6 V B K D
// (the three GEMMs), plus per score element 2 exp and (A + 5) flops, plus O((V B + K) D)
// for the normalization and projections.
// Workspace (besides the outputs): E_hat and grad_E_hat (V B D acc each), P_hat (K D acc;
// none when !normalize and P is fp32/fp64), grad_P_hat (K D acc; none for fp32/fp64, where
// the output is used in place), the block buffer (at most kBlockBytes, ~32 MiB: nb V rows of
// K acc values), the groups' partials (kMaxGroups nb V D acc) and per group A kt doubles
// (tile_grad's code segments, A kt acc values).
//
// This file holds the tensor side (checks, blocking, GEMMs, threading); the row kernels
// are in prototype_cross_entropy_kernels_impl.h, compiled per instruction set (isa.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "../numeric.h"
#include "../op_checks.h"
#include "grain.h"
#include "isa.h"
#include "prototype_cross_entropy_kernels.h"

namespace seer_kernels::cpu::prototype_cross_entropy {
namespace {

using at::Tensor;

// The block buffer's size: nb V rows of K scores fit it (at K = 65536, fp32: 128 rows).
constexpr int64_t kBlockBytes = int64_t{32} << 20;
// Tasks per parallel region: tiles are grouped into at most this many (a fixed number, so
// the sums do not depend on the thread count).
constexpr int64_t kMaxGroups = 16;
// Fewer, larger blocks mean fewer parallel regions (two per block), each a barrier where a
// thread descheduled by another job holds up the rest; GEMMs of up to 1024 rows are as
// fast per FLOP as smaller ones.
constexpr int64_t kMaxBlockRows = 1024;

// The row kernels of this process's instruction set (isa.h).
const Kernels& kernels() {
  static const Kernels& table = select_kernels(&kernels_avx512, &kernels_avx2, &kernels_default);
  return table;
}

// fn(i) for i in [0, n), each task on one thread, claimed dynamically: on a machine shared
// with other jobs a descheduled thread delays one task, not a fixed share of them (the
// static chunks of at::parallel_for). What a task computes does not depend on which thread
// runs it. Internal ATen calls see no autograd (the inputs may require grad).
template <typename F>
void run_tasks(int64_t n, const F& fn) {
  const int64_t threads = std::min<int64_t>(n, at::get_num_threads());
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::max<int64_t>(threads, 1), 1, [&](int64_t, int64_t) {
    c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
    for (int64_t i = next++; i < n; i = next++) fn(i);
  });
}

int64_t next_pow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Tile, group and block sizes: functions of the shapes alone.
struct Geometry {
  int64_t kt;   // tile width (columns of K)
  int64_t nt;   // tiles
  int64_t tpg;  // tiles per group
  int64_t ng;   // groups (tasks per region)
  int64_t nb;   // samples per block
  int64_t rb;   // rows per full block, nb V
};

Geometry geometry(int64_t V, int64_t B, int64_t K, int64_t acc_size) {
  Geometry g{};
  // ~16 tiles (one per task) of 64 to 1024 columns: GEMMs of ~100-256 x kt x D that MKL
  // runs near peak on one core, few enough calls that dispatch (~5 us) is noise.
  g.kt = std::min(K, std::clamp<int64_t>(next_pow2((K + kMaxGroups - 1) / kMaxGroups), 64, 1024));
  g.nt = (K + g.kt - 1) / g.kt;
  g.tpg = (g.nt + kMaxGroups - 1) / kMaxGroups;
  g.ng = (g.nt + g.tpg - 1) / g.tpg;
  const int64_t rows =
      std::clamp<int64_t>(kBlockBytes / (g.nt * g.kt * acc_size), 1, kMaxBlockRows);
  g.nb = std::clamp<int64_t>(rows / V, 1, B);
  g.rb = g.nb * V;
  return g;
}

void check_cpu(const Tensor& e, const Tensor& p, const Tensor& codes, double temperature) {
  check_head_operands(e, p, codes, temperature);  // op_checks.h
  TORCH_CHECK(
      e.device().is_cpu() && p.device().is_cpu() && codes.device().is_cpu(),
      "prototype_cross_entropy (CPU): embeddings, prototypes and codes must be CPU tensors");
}

std::tuple<Tensor, Tensor, Tensor> forward_cpu(const Tensor& e_in, const Tensor& p_in,
                                               const Tensor& codes_in, double temperature,
                                               bool normalize) {
  check_cpu(e_in, p_in, codes_in, temperature);
  // Internal GEMMs on worker threads must not see the inputs' requires_grad.
  c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
  const Tensor e = e_in.contiguous(), p = p_in.contiguous();
  // Codes may be a slice of larger codes (the batch rows of batch + queue): any row
  // strides, contiguous rows.
  const Tensor codes = codes_in.stride(2) == 1 ? codes_in : codes_in.contiguous();
  const int64_t V = e.size(0), B = e.size(1), D = e.size(2), K = p.size(0), A = codes.size(0);
  const auto dtype = e.scalar_type();
  const auto acc = acc_dtype(dtype);  // numeric.h
  const bool f64 = acc == at::kDouble;
  const int64_t acc_size = f64 ? 8 : 4;
  const auto acc_options = e.options().dtype(acc);
  const Kernels& k = kernels();
  const Geometry geo = geometry(V, B, K, acc_size);
  const double inv_t = 1.0 / temperature;

  // Normalized operands (sample-major E_hat: row j = b V + v) and inverse norms.
  Tensor e_hat = at::empty({B * V, D}, acc_options);
  const bool p_direct = !normalize && dtype == acc;
  Tensor p_hat = p_direct ? p : at::empty({K, D}, acc_options);
  std::vector<double> rn_e(B * V), rn_p(K, 1.0);
  {
    const char* e_ptr = static_cast<const char*>(e.const_data_ptr());
    const char* p_ptr = static_cast<const char*>(p.const_data_ptr());
    char* eh = static_cast<char*>(e_hat.data_ptr());
    char* ph = static_cast<char*>(p_hat.data_ptr());
    const int64_t in_row = D * e.element_size(), acc_row = D * acc_size;
    const int64_t rows = B * V + (p_direct ? 0 : K);
    at::parallel_for(0, rows, row_grain(D), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        if (i < B * V) {
          const int64_t b = i / V, v = i % V;
          rn_e[i] = k.normalize_row(e_ptr + (v * B + b) * in_row, dtype, D, eh + i * acc_row,
                                    normalize, f64);
        } else {
          const int64_t r = i - B * V;
          rn_p[r] = k.normalize_row(p_ptr + r * in_row, dtype, D, ph + r * acc_row, normalize, f64);
        }
      }
    });
  }

  // Code row sums r[a, b].
  const auto codes_dtype = codes.scalar_type();
  const char* codes_ptr = static_cast<const char*>(codes.const_data_ptr());
  const int64_t code_size = codes.element_size();
  std::vector<double> code_sums(A * B);
  at::parallel_for(0, A * B, row_grain(K), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t a = i / B, b = i % B;
      const char* row = codes_ptr + (a * codes.stride(0) + b * codes.stride(1)) * code_size;
      code_sums[i] = k.row_sum(row, codes_dtype, K, f64);
    }
  });

  Tensor grad_p = at::empty({K, D}, p.options());
  Tensor gp_hat = dtype == acc ? grad_p : at::empty({K, D}, acc_options);
  Tensor ge_hat = at::empty({B * V, D}, acc_options);
  Tensor buffer = at::empty({geo.nt, geo.rb, geo.kt}, acc_options);
  Tensor ge_part = at::empty({geo.ng, geo.rb, D}, acc_options);
  const int64_t stats = geo.ng * geo.rb;
  std::vector<double> m_g(stats), s_g(stats), gap_g(stats);
  std::vector<double> lse(geo.rb), row_max(geo.rb), log_s(geo.rb), big_r(geo.rb);
  std::vector<double> row_loss(B * V);
  // Each group's tile_grad scratch: A kt acc values (doubles hold either acc type).
  std::vector<double> tile_scratch(geo.ng * A * geo.kt);
  const double norm = static_cast<double>(A) * static_cast<double>(V - 1) * static_cast<double>(B);
  const double coef = 1.0 / (temperature * norm);

  auto tile = [&](int64_t t, int64_t rows) {
    const int64_t k0 = t * geo.kt, kw = std::min(geo.kt, K - k0);
    return std::make_tuple(k0, kw, buffer[t].narrow(0, 0, rows).narrow(1, 0, kw));
  };

  for (int64_t b0 = 0; b0 < B; b0 += geo.nb) {
    const int64_t samples = std::min(geo.nb, B - b0), rows = samples * V;
    const Tensor e_blk = e_hat.narrow(0, b0 * V, rows);

    // Region 1: scores and the groups' running (max, sum exp).
    run_tasks(geo.ng, [&](int64_t g) {
      for (int64_t t = g * geo.tpg; t < std::min(geo.nt, (g + 1) * geo.tpg); ++t) {
        auto [k0, kw, s_t] = tile(t, rows);
        at::mm_out(s_t, e_blk, p_hat.narrow(0, k0, kw).t());
        k.fold_stats({s_t.const_data_ptr(), rows, kw, geo.kt, inv_t, m_g.data() + g * geo.rb,
                      s_g.data() + g * geo.rb, t == g * geo.tpg, f64});
      }
    });

    // Combine the groups in index order: the row max, lse, R_v[b].
    for (int64_t r = 0; r < rows; ++r) {
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t g = 0; g < geo.ng; ++g) m = std::max(m, m_g[g * geo.rb + r]);
      double s = 0.0;
      for (int64_t g = 0; g < geo.ng; ++g)
        s += s_g[g * geo.rb + r] * std::exp((m_g[g * geo.rb + r] - m) * inv_t);
      row_max[r] = m;
      log_s[r] = std::log(s);
      lse[r] = m * inv_t + log_s[r];
      const int64_t b = b0 + r / V, v = r % V;
      double big = 0.0;
      for (int64_t a = 0; a < A; ++a) {
        if (a != v) big += code_sums[a * B + b];
      }
      big_r[r] = big;
      for (int64_t g = 0; g < geo.ng; ++g) gap_g[g * geo.rb + r] = 0.0;
    }

    // Region 2: the gradient tiles, grad_P_hat's tiles and the groups' grad_E_hat partials.
    run_tasks(geo.ng, [&](int64_t g) {
      Tensor part = ge_part[g].narrow(0, 0, rows);
      for (int64_t t = g * geo.tpg; t < std::min(geo.nt, (g + 1) * geo.tpg); ++t) {
        auto [k0, kw, s_t] = tile(t, rows);
        k.tile_grad({s_t.data_ptr(),
                     samples,
                     V,
                     A,
                     kw,
                     geo.kt,
                     b0,
                     k0,
                     codes_ptr,
                     codes_dtype,
                     codes.stride(0),
                     codes.stride(1),
                     lse.data(),
                     row_max.data(),
                     big_r.data(),
                     inv_t,
                     temperature,
                     coef,
                     gap_g.data() + g * geo.rb,
                     tile_scratch.data() + g * A * geo.kt,
                     f64});
        const Tensor p_t = p_hat.narrow(0, k0, kw);
        Tensor gp_t = gp_hat.narrow(0, k0, kw);
        if (b0 == 0)
          at::mm_out(gp_t, s_t.t(), e_blk);
        else
          gp_t.addmm_(s_t.t(), e_blk);
        if (t == g * geo.tpg)
          at::mm_out(part, s_t, p_t);
        else
          part.addmm_(s_t, p_t);
      }
    });

    // Combine the grad_E_hat partials in group order; the rows' losses.
    char* geh = static_cast<char*>(ge_hat.data_ptr()) + b0 * V * D * acc_size;
    const char* parts = static_cast<const char*>(ge_part.const_data_ptr());
    at::parallel_for(0, rows, row_grain(D * geo.ng), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        k.sum_parts(parts + r * D * acc_size, geo.ng, geo.rb * D, D, geh + r * D * acc_size, f64);
      }
    });
    for (int64_t r = 0; r < rows; ++r) {
      double gap = 0.0;
      for (int64_t g = 0; g < geo.ng; ++g) gap += gap_g[g * geo.rb + r];
      row_loss[b0 * V + r] = big_r[r] * log_s[r] + gap * inv_t;
    }
  }

  double total = 0.0;
  for (const double x : row_loss) total += x;  // index order: the same bits for any thread count
  Tensor loss = at::scalar_tensor(total / norm, e.options().dtype(acc));

  // The normalization's backward, into the input dtype.
  Tensor grad_e = at::empty({V, B, D}, e.options());
  {
    const char* e_ptr = static_cast<const char*>(e.const_data_ptr());
    const char* p_ptr = static_cast<const char*>(p.const_data_ptr());
    const char* geh = static_cast<const char*>(ge_hat.const_data_ptr());
    const char* gph = static_cast<const char*>(gp_hat.const_data_ptr());
    char* ge_out = static_cast<char*>(grad_e.data_ptr());
    char* gp_out = static_cast<char*>(grad_p.data_ptr());
    const int64_t in_row = D * e.element_size(), acc_row = D * acc_size;
    at::parallel_for(0, B * V + K, row_grain(D), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        if (i < B * V) {
          const int64_t b = i / V, v = i % V, row = v * B + b;
          k.project_row(geh + i * acc_row, e_ptr + row * in_row, dtype, D, rn_e[i],
                        ge_out + row * in_row, normalize, f64);
        } else {
          const int64_t r = i - B * V;
          k.project_row(gph + r * acc_row, p_ptr + r * in_row, dtype, D, rn_p[r],
                        gp_out + r * in_row, normalize, f64);
        }
      }
    });
  }
  return {loss, grad_e, grad_p};
}

// The backward of a scalar loss whose gradients the forward computed: scale them.
std::tuple<Tensor, Tensor> backward_cpu(const Tensor& grad_loss, const Tensor& grad_e,
                                        const Tensor& grad_p) {
  check_head_backward(grad_loss, grad_e, grad_p);  // op_checks.h
  // A 0-dim factor: the products run in the accumulation type and keep the gradients' dtype.
  const Tensor g = grad_loss.reshape({});
  return {grad_e * g, grad_p * g};
}

}  // namespace
}  // namespace seer_kernels::cpu::prototype_cross_entropy

TORCH_LIBRARY_IMPL(seer_kernels, CPU, m) {
  m.impl("prototype_cross_entropy", &seer_kernels::cpu::prototype_cross_entropy::forward_cpu);
  m.impl("prototype_cross_entropy_backward",
         &seer_kernels::cpu::prototype_cross_entropy::backward_cpu);
}

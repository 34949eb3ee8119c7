// Interface between the cosine prototype scores op (prototype_scores.cpp: tensors,
// checks, the GEMMs, threading) and its row kernels (the normalization and projection
// passes), compiled once per instruction set (prototype_scores_kernels_impl.h included by
// prototype_scores_kernels_{avx512,avx2,default}.cpp, the scheme of isa.h). Only raw
// pointers cross this boundary, so the ISA units include no tensor headers.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <type_traits>

#include "../numeric.h"

namespace seer_kernels::cpu::prototype_scores {

// GEMM element type: the input's, except fp16, which runs as fp32 (ATen's fp16 CPU GEMM
// measured 5-10x slower than MKL sgemm here).
template <typename scalar_t>
using gemm_type = std::conditional_t<std::is_same_v<scalar_t, c10::Half>, float, scalar_t>;

inline c10::ScalarType gemm_dtype(c10::ScalarType t) {
  return t == c10::ScalarType::Half ? c10::ScalarType::Float : t;
}

// Both operands of a row pass as raw pointers (index 0: embeddings, 1: prototypes), so
// that one parallel region (one fork/join) covers both. x and d_x have `dtype`, x_hat and
// d_hat gemm_dtype(dtype), rn acc_dtype(dtype) (csrc/numeric.h).
struct RowPass {
  c10::ScalarType dtype = c10::ScalarType::Float;
  int64_t rows[2] = {0, 0};
  int64_t d = 0;
  const void* x[2] = {nullptr, nullptr};
  void* rn[2] = {nullptr, nullptr};  // written when compute_rn, else read
  bool compute_rn = false;
  void* x_hat[2] = {nullptr, nullptr};        // normalize: output
  const void* d_hat[2] = {nullptr, nullptr};  // project: input
  void* d_x[2] = {nullptr, nullptr};          // project: output (may alias d_hat)
};

struct Kernels {
  // Rows [begin, end) of the two operands one after the other (i < rows[0]: embeddings):
  // x_hat = x * rn; first rn = 1/max(||x||, 1e-12) when compute_rn.
  void (*normalize_rows)(const RowPass& pass, int64_t begin, int64_t end);
  // The same rows: d_x = rn (d_hat - x_hat <x_hat, d_hat>), rn d_hat where ||x|| < 1e-12.
  void (*project_rows)(const RowPass& pass, int64_t begin, int64_t end);
};

const Kernels& kernels_avx512();
const Kernels& kernels_avx2();
const Kernels& kernels_default();

}  // namespace seer_kernels::cpu::prototype_scores

// What a Sinkhorn pass makes of each column's merged logsumexp: the merge modes and the
// log_u update rules, shared by the CPU driver (csrc/cpu/sinkhorn.cpp, on the host) and
// the CUDA merge kernel (csrc/cuda/sinkhorn.cu, on the device), so the two backends apply
// one formula with one rounding order. The Triton backend names the same modes
// MERGE_STATS, MERGE_LSE, MERGE_FIRST and MERGE_UPDATE in seer_kernels/triton/sinkhorn.py: the
// integer values are that contract and must stay equal on both sides.
#pragma once

#include "numeric.h"

namespace seer_kernels {

enum class SinkhornMerge : int {
  kStats = 0,   // out = the merged (2, K) statistics (the sinkhorn_colstats op)
  kLse = 1,     // log_u = lse (iterations = 0, before the total logsumexp)
  kFirst = 2,   // log_u = -lse - log K (pass 0)
  kUpdate = 3,  // log_u += log B - log K - lse (pass t >= 1)
};

// The new log_u of one column from its logsumexp `lse` and its old log_u, for every mode
// but kStats (which stores the statistics instead). fp32, evaluated left to right as the
// reference does.
SEER_HOST_DEVICE inline float sinkhorn_log_u(SinkhornMerge mode, float lse, float log_u,
                                             float log_b, float log_k) {
  switch (mode) {
    case SinkhornMerge::kLse:
      return lse;
    case SinkhornMerge::kFirst:
      return -lse - log_k;
    default:  // kUpdate
      return ((log_u + log_b) - log_k) - lse;
  }
}

}  // namespace seer_kernels

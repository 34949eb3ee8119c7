"""Sinkhorn-Knopp codes for SwAV, fused.

Order of this module: Triton kernels, launchers, registration (fake kernels of the C++
ops, the Triton op), public wrapper. The C++ kernels are csrc/cpu/sinkhorn.cpp and
csrc/cuda/sinkhorn.cu; the oracle is seer_kernels.reference.sinkhorn.

Algorithm (every backend, log domain, fp32 accumulation whatever the input dtype):
with L = scores / eps and a per-prototype log scaling log_u (K,),
  pass 0      log_u = -logsumexp_b L[:, k] - log K          (SwAV's first prototype step)
  pass t      log_u += log(B/K) - logsumexp_b log_softmax_k(L + log_u)[:, k]
  last pass   codes = softmax_k(L + log_u)                   (the final sample step)
so `iterations` = T costs T + 1 reads of the scores and one write of the codes. The
column logsumexps use a per-column running max, so nothing over- or underflows for any
finite input and any eps > 0. Codes carry no gradient: the op is not differentiable and
the public function detaches its input (SwAV computes codes under no_grad).

Non-finite input: NaN/Inf propagate into the codes (never a finite wrong answer);
`check_finite=True` raises a ValueError instead (one device sync).
"""

from __future__ import annotations

import math

import torch

from seer_kernels import _backend, _checks, _distributed, reference

# ----------------------------------------------------------------------------- Triton
# (kernels and launchers: see below)

# ------------------------------------------------------------------------ registration


def _register_fakes() -> None:
    @torch.library.register_fake("seer_kernels::sinkhorn")
    def _(scores, epsilon, iterations):
        return scores.new_empty(scores.shape, dtype=torch.float32)

    @torch.library.register_fake("seer_kernels::sinkhorn_colstats")
    def _(scores, log_u, epsilon, normalize_rows):
        return scores.new_empty((2, scores.shape[1]), dtype=torch.float32)

    @torch.library.register_fake("seer_kernels::sinkhorn_codes")
    def _(scores, log_u, epsilon, normalize_rows):
        return scores.new_empty(scores.shape, dtype=torch.float32)


if _backend.extension() is not None:
    _register_fakes()


# ------------------------------------------------------------------------ public API


def _distributed_sinkhorn(scores, epsilon, iterations, group, colstats, codes):
    """The same passes as the fused op, with each pass's K-vector of column statistics
    combined across ranks (one all_gather per half-iteration, no host sync)."""
    k = scores.shape[1]
    log_k = math.log(k)
    zeros = torch.zeros(k, dtype=torch.float32, device=scores.device)
    log_b = torch.log(_distributed.global_rows(scores.shape[0], scores.device, group)).float()
    col = _distributed.combine_colstats(colstats(scores, zeros, epsilon, False), group)
    if iterations == 0:
        total = torch.logsumexp(col, dim=0)
        return codes(scores, (log_b - total).expand(k).contiguous(), epsilon, False)
    log_u = -col - log_k
    for _ in range(iterations - 1):
        stats = colstats(scores, log_u, epsilon, True)
        log_u = log_u + log_b - log_k - _distributed.combine_colstats(stats, group)
    return codes(scores, log_u, epsilon, True)


def sinkhorn(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    *,
    process_group=None,
    backend: str | None = None,
    check_finite: bool = False,
) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp codes of prototype `scores` (B, K) -> float32 (B, K).

    Args:
        scores: (B, K) scores of B samples (batch plus queue rows) against K prototypes,
            fp32/bf16/fp16. Detached: codes carry no gradient.
        epsilon: entropic regularization (SwAV 0.05; SEER 0.03-0.05), > 0.
        iterations: Sinkhorn rounds (SwAV 3, SEER 10), >= 0; 0 means only the total
            normalization, as in SwAV's own loop.
        process_group: a torch.distributed group (or "world"): rows are spread over the
            ranks, B is the global row count, and every rank gets the codes of its own
            rows, equal to the single-process result on the concatenated scores.
        backend: "reference", "cpu", "cuda", "triton" or None (fastest available).
        check_finite: raise ValueError on NaN/Inf in scores (costs a device sync).
    Returns: (B, K) float32 codes; every row sums to 1 when iterations >= 1.
    """
    epsilon, iterations = _checks.sinkhorn_args(scores, epsilon, iterations)
    if check_finite:
        _checks.finite("scores", scores)
    name = _backend.resolve(backend, scores.device)
    scores = scores.detach()
    if name == "reference":
        return reference.sinkhorn(scores, epsilon, iterations, process_group)
    group = _distributed.group_or_none(process_group)
    if name == "triton":
        ops = (_triton_sinkhorn, _triton_colstats, _triton_codes)
    else:
        ops = (
            torch.ops.seer_kernels.sinkhorn,
            torch.ops.seer_kernels.sinkhorn_colstats,
            torch.ops.seer_kernels.sinkhorn_codes,
        )
    if group is None:
        return ops[0](scores, epsilon, iterations)
    return _distributed_sinkhorn(scores, epsilon, iterations, group, ops[1], ops[2])

"""Sinkhorn-Knopp codes for SwAV, fused: registration, then the public wrapper. Kernels:
csrc/cpu/sinkhorn.cpp, csrc/cuda/sinkhorn.cu, seer_kernels/triton/sinkhorn.py; the
oracle is seer_kernels.reference.sinkhorn.

Algorithm (every backend, fp32 accumulation whatever the input dtype), in the log domain:
with L = scores / eps and a per-prototype log scaling log_u (K,),
  pass 0      log_u = -logsumexp_b L[:, k] - log K          (SwAV's first prototype step)
  pass t      log_u += log(B/K) - logsumexp_b log_softmax_k(L + log_u)[:, k]
  last pass   codes = softmax_k(L + log_u)                   (the final sample step)
and `iterations` = 0 gives codes = B * exp(L - logsumexp(L)) (SwAV's total
normalization only). So T iterations cost T + 1 reads of the scores and one write of the
codes. Column statistics are (shift, sum exp(x - shift)) pairs: pass 0 shifts by a
per-column running max (0 where it is not finite), so nothing over- or underflows for
any finite input and any eps > 0; passes t >= 1 sum row-softmax entries, which lie in
[0, 1], with shift 0 (each column's sum is provably >= 1/K there, so nothing that
matters underflows; see csrc/cpu/sinkhorn.cpp). The cpu backend runs the same iteration
in the exp domain: pass 0 stores E = exp(L - column max) (per row chunk) in the codes
buffer and the later passes scale E by per-column weights and row sums, one exp per
element in all instead of one per element per pass; rows where E underflows, and crops
with non-finite input, are computed in the log domain, so the results are the same to
fp32 rounding (csrc/cpu/sinkhorn.cpp has the bound). Codes carry no gradient: the op is not
differentiable and the public function detaches its input (SwAV computes codes under
no_grad), so backward through codes raises "does not require grad".

Non-finite input, the same on every backend: a NaN score makes every code NaN; +inf
gives NaN where inf - inf appears (never a finite wrong answer); `check_finite=True`
raises a ValueError instead (one device sync). Fused backends take fp32/bf16/fp16 and
return fp32; float64 runs on backend="reference" only (the default for float64 scores),
which returns float64.

Memory, CPU backend (measured at K = 65536 by tests/test_memory.py): besides the (B, K)
fp32 codes (whole 2 MiB pages from 4 MiB on), at most (2 C + 8 T + 5) Kp fp32 values, for
T threads, C = max(16, ceil(B / 256)) row chunks and Kp = K rounded up to the vector
width: per-chunk column statistics, per-thread row buffers and a few K-vectors. With
iterations >= 1 the codes are allocated first and hold E between the passes, beside
(2 C + 3 T + 4) Kp; the log-domain passes (iterations = 0, non-finite input) use up to
(2 C + 8 T + 5) Kp. (A, B, K) scores take one call on the cpu backend (the crops' row
chunks share the threads): the (A, B, K) codes and at most (2 A C + 8 T + 5 A) Kp. O(K)
per crop: nothing else of size B K, except a contiguous copy of strided scores.
"""

from __future__ import annotations

import math

import torch

from seer_kernels import _backend, _checks, _distributed, _library, reference

# ------------------------------------------------------------------------ registration


def _fake_sinkhorn(scores, epsilon, iterations):
    return scores.new_empty(scores.shape, dtype=torch.float32)


def _fake_colstats(scores, log_u, epsilon, normalize_rows):
    # (B, K) -> (2, K); (A, B, K) -> (A, 2, K).
    return scores.new_empty((*scores.shape[:-2], 2, scores.shape[-1]), dtype=torch.float32)


def _fake_codes(scores, log_u, epsilon, normalize_rows):
    return scores.new_empty(scores.shape, dtype=torch.float32)


# Not differentiable (codes carry no gradient), so no autograd.
_library.register(
    "sinkhorn",
    fakes={"sinkhorn": _fake_sinkhorn, "sinkhorn_colstats": _fake_colstats, "sinkhorn_codes": _fake_codes},
)

# ------------------------------------------------------------------------ public API

_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _distributed_sinkhorn(scores, epsilon, iterations, group, colstats, codes):
    """The same passes as the fused op, with each pass's K-vector of column statistics
    (one per crop for (A, B, K) scores) combined across ranks: one all_gather per
    half-iteration, no host sync."""
    k = scores.shape[-1]
    log_k = math.log(k)
    zeros = scores.new_zeros((*scores.shape[:-2], k), dtype=torch.float32)
    rows = _distributed.global_rows(scores.shape[-2], scores.device, group).float()
    log_b = torch.log(rows)
    col = _distributed.combine_colstats(colstats(scores, zeros, epsilon, False), group)
    if iterations == 0:
        # B * exp(L - total), as the single-process kernels compute it.
        total = torch.logsumexp(col, dim=-1, keepdim=True)
        return codes(scores, (-total).expand_as(col).contiguous(), epsilon, False) * rows
    log_u = -col - log_k
    for _ in range(iterations - 1):
        stats = colstats(scores, log_u, epsilon, True)
        log_u = log_u + log_b - log_k - _distributed.combine_colstats(stats, group)
    return codes(scores, log_u, epsilon, True)


# Backends whose kernels take (A, B, K) scores (and (A, K) log_u) in one call; the
# others get one call per crop (`_per_crop`).
_CROPS_IN_ONE_CALL = frozenset({"reference", "cpu", "triton"})


def _per_crop(kernel):
    """A schema op that takes (B, K) scores (and a (K,) log_u), applied to each crop of
    (A, B, K) scores (and (A, K) log_u), for backends whose kernels take one crop a call
    (cuda: its kernels are not changed until a GPU can run the change)."""

    def run(scores, *args):
        if scores.dim() == 2:
            return kernel(scores, *args)
        if args and isinstance(args[0], torch.Tensor):  # log_u (A, K)
            return torch.stack([kernel(s, lu, *args[1:]) for s, lu in zip(scores, args[0], strict=True)])
        return torch.stack([kernel(s, *args) for s in scores])

    return run


def sinkhorn(
    scores: torch.Tensor,
    *,
    epsilon: float = 0.05,
    iterations: int = 3,
    process_group=None,
    backend: str | None = None,
    check_finite: bool = False,
) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp codes of prototype `scores` (B, K) -> float32 (B, K), or of
    A assignment crops at once: (A, B, K) -> (A, B, K), each crop its own problem.

    `epsilon` and `iterations` are keyword-only: lightly's `sinkhorn(out, iterations,
    epsilon)` and SwAV's code order them the other way, so a positional call would
    silently swap them.

    Args:
        scores: (B, K) scores of B samples (batch plus queue rows) against K prototypes,
            or (A, B, K) for A crops normalized independently (SwAV's assignment crops);
            fp32/bf16/fp16. Detached: codes carry no gradient.
        epsilon: entropic regularization (SwAV 0.05; SEER 0.03-0.05), > 0.
        iterations: Sinkhorn rounds (SwAV 3, SEER 10), >= 0; 0 means only the total
            normalization, as in SwAV's own loop.
        process_group: a torch.distributed group (or "world"): rows are spread over the
            ranks, B is the global row count, and every rank gets the codes of its own
            rows, equal to the single-process result on the concatenated scores.
        backend: "reference", "cpu", "cuda", "triton" or None (fastest available).
        check_finite: raise ValueError on NaN/Inf in scores (costs a device sync).
    Returns: (B, K) codes, float32 for float32/bfloat16/float16 scores; float64 scores
    (an oracle's dtype, which no fused kernel takes) run on backend="reference" when
    `backend` is None and give float64 codes. Every row sums to 1 when iterations >= 1.
    """
    epsilon, iterations = _checks.sinkhorn_args(scores, epsilon, iterations)
    if check_finite:
        _checks.finite("scores", scores)
    name = _backend.resolve(backend, scores.device, "sinkhorn")
    if backend is None and scores.dtype not in _FUSED_DTYPES:
        name = "reference"  # float64 (an oracle's dtype): no fused kernel takes it
    scores = scores.detach()
    if name != "reference" and scores.dtype not in _FUSED_DTYPES:
        raise TypeError(
            f"scores must be float32, float16 or bfloat16 for backend {name!r} (float64 runs on "
            f"backend='reference'), got dtype {scores.dtype}"
        )
    group = _distributed.group_or_none(process_group)
    if group is None:
        if scores.dim() == 3 and name not in _CROPS_IN_ONE_CALL:
            return _per_crop(lambda s, *a: _library.run("sinkhorn", name, s, *a))(scores, epsilon, iterations)
        return _library.run("sinkhorn", name, scores, epsilon, iterations)
    if name == "reference":
        return reference.sinkhorn(scores, epsilon, iterations, group)  # the oracle spreads rows itself
    colstats = _library.kernel("sinkhorn", name, "sinkhorn_colstats")
    codes = _library.kernel("sinkhorn", name, "sinkhorn_codes")
    if name not in _CROPS_IN_ONE_CALL:
        colstats, codes = _per_crop(colstats), _per_crop(codes)
    return _distributed_sinkhorn(scores, epsilon, iterations, group, colstats, codes)

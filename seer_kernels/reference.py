"""Plain-PyTorch reference implementations: the oracle of every test and a baseline of
every benchmark. Written for clarity, not speed.

- sinkhorn: SwAV's Sinkhorn-Knopp in the log domain (finite at eps = 0.01 and with
  fp16/bf16 inputs, where the plain formulation returns NaN).
- swav_sinkhorn_baseline, lightly_sinkhorn_baseline: the plain formulation as users run
  it today, in SwAV's and in lightly's words (the benchmarks time both: "plain" is the
  faster of the two on each device).
- prototype_scores: cosine scores of embeddings against prototypes.
- swav_cross_entropy: the loop over (assignment crop, other crop) pairs that SwAV and
  lightly write, one log-softmax per pair.
- prototype_cross_entropy: the SwAV head, prototype_scores into swav_cross_entropy.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from seer_kernels import _distributed
from seer_kernels._dtypes import accumulation_dtype


def _col_logsumexp(x: torch.Tensor, group) -> torch.Tensor:
    """(..., B, K) -> (..., K): logsumexp over the rows of every crop, across ranks."""
    m = x.amax(dim=-2)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(x - m_safe.unsqueeze(-2)).sum(dim=-2)
    return _distributed.combine_colstats(torch.stack([m_safe, s], dim=-2), group)


@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, process_group=None
) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp codes of `scores` (B, K), in the log domain; (A, B, K)
    scores are A independent problems (one per assignment crop).

    SwAV: Q = exp(scores / eps)^T (K x B), Q /= sum(Q); `iterations` times {each
    prototype row to 1/K, each sample column to 1/B}; return (Q * B)^T. With Q[k, b] =
    exp(L[b, k] + log_u[k] + log_v[b]), L = scores / eps, the prototype step sets
    log_u = -log K - logsumexp_b(L + log_v) and the sample step makes each row of the
    result softmax_k(L[b] + log_u). Per-sample constants cancel, so only log_u is kept.
    Returns float32 (float64 for float64 input); every row sums to 1 (iterations >= 1).
    """
    group = _distributed.group_or_none(process_group)
    dtype = accumulation_dtype(scores.dtype)
    logits = scores.to(dtype) / epsilon
    k = logits.shape[-1]
    b_total = _distributed.global_rows(logits.shape[-2], logits.device, group).to(dtype)
    if iterations == 0:
        # Only the total normalization: B * exp(L) / sum(exp(L)), per crop.
        total = torch.logsumexp(_col_logsumexp(logits, group), dim=-1)
        return torch.exp(logits - total[..., None, None] + torch.log(b_total))
    log_u = -_col_logsumexp(logits, group) - math.log(k)
    for _ in range(iterations - 1):
        log_p = torch.log_softmax(logits + log_u.unsqueeze(-2), dim=-1)
        log_u = log_u + torch.log(b_total) - math.log(k) - _col_logsumexp(log_p, group)
    return torch.softmax(logits + log_u.unsqueeze(-2), dim=-1)


@torch.no_grad()
def swav_sinkhorn_baseline(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, process_group=None
) -> torch.Tensor:
    """The plain SwAV formulation (SwAV's repository, lightly): exp, then alternating
    normalizations, in the input's dtype. Overflows in fp16 at eps 0.05 and returns NaN
    once exp(score / eps) overflows or a row/column underflows to all zeros."""
    group = _distributed.group_or_none(process_group)
    q = torch.exp(scores / epsilon).t()
    b = q.shape[1]
    if group is not None:
        b_t = torch.tensor([b], device=q.device)
        dist.all_reduce(b_t, group=group)
        b = int(b_t.item())
    k = q.shape[0]
    total = q.sum()
    if group is not None:
        dist.all_reduce(total, group=group)
    q /= total
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        if group is not None:
            dist.all_reduce(rows, group=group)
        q /= rows
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


@torch.no_grad()
def lightly_sinkhorn_baseline(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, process_group=None
) -> torch.Tensor:
    """lightly's `sinkhorn(out, iterations, epsilon, gather_distributed)` (lightly.loss.
    swav_loss), with this module's argument order: SwAV's iteration without the 1/K of the
    prototype step (the sample step that follows cancels it), one in-place division per
    step on the transposed view, and B = local rows x world size. The same values as
    `swav_sinkhorn_baseline` in exact arithmetic, one full pass less per iteration; the
    same overflow and 0/0 failures."""
    group = _distributed.group_or_none(process_group)
    q = torch.exp(scores / epsilon).t()
    total = torch.sum(q)
    if group is not None:
        dist.all_reduce(total, group=group)
    q /= total
    b = q.shape[1] * (dist.get_world_size(group) if group is not None else 1)
    for _ in range(iterations):
        rows = torch.sum(q, dim=1, keepdim=True)
        if group is not None:
            dist.all_reduce(rows, group=group)
        q /= rows
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def prototype_scores(
    embeddings: torch.Tensor, prototypes: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """(N, D) x (K, D) -> (N, K): normalize(embeddings) @ normalize(prototypes)^T with
    row-wise L2 normalization (eps 1e-12, as F.normalize); plain product if not normalize."""
    if normalize:
        embeddings = F.normalize(embeddings, dim=1, eps=1e-12)
        prototypes = F.normalize(prototypes, dim=1, eps=1e-12)
    return embeddings @ prototypes.t()


def swav_cross_entropy(scores: torch.Tensor, codes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SwAV's swapped-prediction loss over crops: scores (V, B, K), codes (A, B, K).

    mean over a < A of 1/(V-1) * sum_{v != a} mean_b[-sum_k codes[a, b, k] *
    log_softmax(scores[v, b] / T)_k]. Differentiable in scores; codes carry no gradient.
    """
    n_crops, n_assign = scores.shape[0], codes.shape[0]
    codes = codes.detach()
    loss = scores.new_zeros((), dtype=accumulation_dtype(scores.dtype))
    for a in range(n_assign):
        sub = scores.new_zeros((), dtype=loss.dtype)
        for v in range(n_crops):
            if v == a:
                continue
            log_p = torch.log_softmax(scores[v].to(loss.dtype) / temperature, dim=1)
            sub = sub - (codes[a].to(loss.dtype) * log_p).sum(dim=1).mean()
        loss = loss + sub / (n_crops - 1)
    return loss / n_assign


def prototype_cross_entropy(
    embeddings: torch.Tensor,
    prototypes: torch.Tensor,
    codes: torch.Tensor,
    temperature: float = 0.1,
    normalize: bool = True,
) -> torch.Tensor:
    """The SwAV head's loss from embeddings (V, B, D), prototypes (K, D) and codes (A, B, K):
    swav_cross_entropy(prototype_scores(e, p, normalize).view(V, B, K), codes, T), i.e.
    SwAV's swapped prediction (Caron et al. 2020, eq. 1-2) on the cosine scores z^T c_k.
    Holds the (V B, K) scores, as plain SwAV code does."""
    v, b, d = embeddings.shape
    scores = prototype_scores(embeddings.reshape(v * b, d), prototypes, normalize)
    return swav_cross_entropy(scores.view(v, b, -1), codes, temperature)

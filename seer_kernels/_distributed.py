"""The collectives of the distributed Sinkhorn, shared by the reference and the fused
path. Each call is one collective on a small tensor and none syncs with the host."""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_or_none(process_group):
    """`None` means single-process; "world" means the default group."""
    if process_group is None:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "process_group was given but torch.distributed is not initialized; "
            "call torch.distributed.init_process_group first or pass process_group=None"
        )
    return dist.group.WORLD if process_group == "world" else process_group


def global_rows(rows: int, device: torch.device, group) -> torch.Tensor:
    """Total row count over the ranks, as a float64 tensor (no host sync)."""
    n = torch.tensor([float(rows)], dtype=torch.float64, device=device)
    if group is not None:
        dist.all_reduce(n, group=group)
    return n


def combine_colstats(stats: torch.Tensor, group) -> torch.Tensor:
    """(..., 2, K) local [max, sum exp(x - max)] per column -> global per-column
    logsumexp (..., K); the leading dimension, when there is one, holds independent crops.

    One all_gather of 2*K floats per rank: the per-rank maxima differ, so summing the
    sums needs every rank's maximum; gathering both keeps it to a single collective."""
    if group is None:
        return stats.select(-2, 0) + torch.log(stats.select(-2, 1))
    world = dist.get_world_size(group)
    # Gather into a flat (world * 2, K) buffer: gloo accepts only the concatenated layout
    # (NCCL also takes a stacked (world, 2, K) one).
    flat = torch.empty((world * stats.shape[0], *stats.shape[1:]), dtype=stats.dtype, device=stats.device)
    # all_gather_single (torch >= 2.14) is the new name of all_gather_into_tensor.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(flat, stats.contiguous(), group=group)
    gathered = flat.view(world, *stats.shape)
    shifts, sums = gathered.select(-2, 0), gathered.select(-2, 1)
    m = shifts.amax(dim=0)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = (sums * torch.exp(shifts - m_safe)).sum(dim=0)
    return m_safe + torch.log(s)

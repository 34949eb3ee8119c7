"""Sinkhorn-Knopp codes on Triton: kernels, then launchers (plain functions, tensors in
and out; one per schema op of csrc/ops.cpp, named like it). The algorithm is the one of
every backend (seer_kernels/ops/sinkhorn.py); registers nothing.

Bytes moved per pass, (B, K) scores of s bytes: colstats reads B*K*s and writes G*2*K
fp32 partial statistics (G row groups, about two per SM); the merge reads those and
writes K floats; codes reads B*K*s and writes B*K*4. A whole row tile (K <= 16384) stays
in registers, so each pass reads the scores once; wider rows take a second,
cache-resident read of the row tile. T iterations: T + 1 colstats/merge launches and one
codes launch, the log_u updates done by the merge kernel on the device (no host sync).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from seer_kernels._interpreter import wrap_triton
from seer_kernels.triton._common import (
    as_fp32,
    finite_or_zero,
    num_warps,
    online_logsumexp,
    pow2,
    target_programs,
)

# The merge kernel's MODE: what it stores from each column's merged (shift, sum), with
# lse = shift + log(sum). Same numbers as SinkhornMerge in csrc/sinkhorn_merge.h.
# constexpr globals: a jitted kernel may read only those, and branches on them at
# compile time.
MERGE_STATS = tl.constexpr(0)  # out = the merged (2, K) statistics (the colstats op)
MERGE_LSE = tl.constexpr(1)  # log_u = lse (iterations = 0, before _total_kernel)
MERGE_FIRST = tl.constexpr(2)  # log_u = -lse - log K (pass 0)
MERGE_UPDATE = tl.constexpr(3)  # log_u += log B - log K - lse (pass t >= 1)

# Widest row tile kept in registers whole (one read per pass); wider rows loop.
MAX_ONE_TILE = 16384
_TILE_ELEMENTS = 4096

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _load_z(scores, lu, rows, cols, row_end, K, stride_b, eps):
    # z = scores / eps + log_u on a [rows, cols] tile; -inf outside, so it adds nothing.
    mask = (rows < row_end)[:, None] & (cols < K)[None, :]
    ptrs = scores + rows[:, None].to(tl.int64) * stride_b + cols[None, :]
    x = tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32)
    # The reference divides fp32 scores by eps rounded to fp32, so both do that here.
    return tl.div_rn(x, as_fp32(eps)) + lu[None, :]


@triton.jit
def _plain_colstats_kernel(
    scores, log_u, partial, B, K, stride_b, rows_per_group, eps,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # Pass 0 on one (row group, column tile): per-column running max and sum of
    # exp(z - shift), rescaled as the max moves; writes partial[g] = (shift, sum).
    g = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    lu = tl.load(log_u + cols, mask=cols < K, other=0.0)
    row0 = g * rows_per_group
    row_end = tl.minimum(row0 + rows_per_group, B)
    run_max = tl.full([BLOCK_K], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_K], tl.float32)
    for r in range(row0, row_end, BLOCK_B):
        z = _load_z(scores, lu, r + tl.arange(0, BLOCK_B), cols, row_end, K, stride_b, eps)
        run_max, run_sum = online_logsumexp(run_max, run_sum, z, 0)
    out = partial + g * 2 * K + cols
    tl.store(out, finite_or_zero(run_max), mask=cols < K)
    tl.store(out + K, run_sum, mask=cols < K)


@triton.jit
def _row_shift_and_inv_sum(
    scores, lu_ptr, rows, row_end, K, stride_b, eps, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr
):
    # Online row logsumexp over column tiles: returns (shift, 1 / sum exp(z - shift)).
    run_max = tl.full([BLOCK_B], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_B], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        lu = tl.load(lu_ptr + cols, mask=cols < K, other=0.0)
        z = _load_z(scores, lu, rows, cols, row_end, K, stride_b, eps)
        run_max, run_sum = online_logsumexp(run_max, run_sum, z, 1)
    return finite_or_zero(run_max), 1.0 / run_sum


@triton.jit
def _normalized_colstats_kernel(
    scores, log_u, partial, B, K, stride_b, rows_per_group, eps,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr,
):  # fmt: skip
    # Pass t on one row group: column sums of softmax_k(z) (entries in [0, 1], so no
    # shift: see seer_kernels/ops/sinkhorn.py); writes partial[g] = (0, sum).
    g = tl.program_id(0)
    row0 = g * rows_per_group
    row_end = tl.minimum(row0 + rows_per_group, B)
    out = partial + g * 2 * K
    if ONE_TILE:
        cols = tl.arange(0, BLOCK_K)
        lu = tl.load(log_u + cols, mask=cols < K, other=0.0)
        acc = tl.zeros([BLOCK_K], tl.float32)
        for r in range(row0, row_end, BLOCK_B):
            rows = r + tl.arange(0, BLOCK_B)
            z = _load_z(scores, lu, rows, cols, row_end, K, stride_b, eps)
            e = tl.exp(z - tl.max(z, axis=1)[:, None])
            p = e * (1.0 / tl.sum(e, axis=1))[:, None]
            acc += tl.sum(tl.where((rows < row_end)[:, None], p, 0.0), axis=0)
        tl.store(out + cols, tl.zeros([BLOCK_K], tl.float32), mask=cols < K)
        tl.store(out + K + cols, acc, mask=cols < K)
    else:
        # Wide rows: the group's accumulator row lives in `partial` (program-private).
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            tl.store(out + cols, tl.zeros([BLOCK_K], tl.float32), mask=cols < K)
            tl.store(out + K + cols, tl.zeros([BLOCK_K], tl.float32), mask=cols < K)
        for r in range(row0, row_end, BLOCK_B):
            rows = r + tl.arange(0, BLOCK_B)
            shift, inv_sum = _row_shift_and_inv_sum(
                scores, log_u, rows, row_end, K, stride_b, eps, BLOCK_B, BLOCK_K
            )
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                lu = tl.load(log_u + cols, mask=cols < K, other=0.0)
                z = _load_z(scores, lu, rows, cols, row_end, K, stride_b, eps)
                p = tl.exp(z - shift[:, None]) * inv_sum[:, None]
                p = tl.sum(tl.where((rows < row_end)[:, None], p, 0.0), axis=0)
                acc = tl.load(out + K + cols, mask=cols < K, other=0.0)
                tl.store(out + K + cols, acc + p, mask=cols < K)


@triton.jit
def _codes_kernel(
    scores, log_u, codes, B, K, stride_b, eps, scale,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr, NORMALIZE: tl.constexpr,
):  # fmt: skip
    # codes = softmax_k(z) (NORMALIZE) or scale * exp(z) on a BLOCK_B-row tile.
    scale = as_fp32(scale)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    if ONE_TILE:
        cols = tl.arange(0, BLOCK_K)
        lu = tl.load(log_u + cols, mask=cols < K, other=0.0)
        z = _load_z(scores, lu, rows, cols, B, K, stride_b, eps)
        if NORMALIZE:
            e = tl.exp(z - tl.max(z, axis=1)[:, None])
            y = e * (1.0 / tl.sum(e, axis=1))[:, None]
        else:
            y = tl.exp(z) * scale
        mask = (rows < B)[:, None] & (cols < K)[None, :]
        tl.store(codes + rows[:, None].to(tl.int64) * K + cols[None, :], y, mask=mask)
    else:
        shift = tl.zeros([BLOCK_B], tl.float32)
        inv_sum = tl.zeros([BLOCK_B], tl.float32) + scale
        if NORMALIZE:
            shift, inv_sum = _row_shift_and_inv_sum(
                scores, log_u, rows, B, K, stride_b, eps, BLOCK_B, BLOCK_K
            )
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            lu = tl.load(log_u + cols, mask=cols < K, other=0.0)
            z = _load_z(scores, lu, rows, cols, B, K, stride_b, eps)
            y = tl.exp(z - shift[:, None]) * inv_sum[:, None]
            mask = (rows < B)[:, None] & (cols < K)[None, :]
            tl.store(codes + rows[:, None].to(tl.int64) * K + cols[None, :], y, mask=mask)


@triton.jit
def _group_tile(partial, g0, groups, cols, mask, K, GROUP_BLOCK: tl.constexpr):
    # Pointers to the shifts of groups g0 .. g0 + GROUP_BLOCK at `cols` in the (G, 2, K)
    # partials (their sums lie K further), and the mask of the real ones.
    g = g0 + tl.arange(0, GROUP_BLOCK)
    ptrs = partial + g[:, None].to(tl.int64) * 2 * K + cols[None, :]
    return ptrs, (g < groups)[:, None] & mask[None, :]


@triton.jit
def _merge_kernel(
    partial, groups, K, out, log_u, log_b, log_k,
    MODE: tl.constexpr, BLOCK: tl.constexpr, GROUP_BLOCK: tl.constexpr,
):  # fmt: skip
    # Merge the groups' (shift, sum) per column, then store what MODE (one of the
    # MERGE_* constants above) asks for. A program takes BLOCK columns and
    # reduces GROUP_BLOCK groups per step as a tile: the serial depth is
    # 2 G / GROUP_BLOCK loads, not 2 G, and narrow BLOCKs give K / BLOCK programs.
    log_b, log_k = as_fp32(log_b), as_fp32(log_k)
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < K
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    for g0 in range(0, groups, GROUP_BLOCK):
        ptrs, tile_mask = _group_tile(partial, g0, groups, cols, mask, K, GROUP_BLOCK)
        m = tl.maximum(m, tl.max(tl.load(ptrs, mask=tile_mask, other=float("-inf")), axis=0))
    shift = finite_or_zero(m)
    s = tl.zeros([BLOCK], tl.float32)
    for g0 in range(0, groups, GROUP_BLOCK):
        ptrs, tile_mask = _group_tile(partial, g0, groups, cols, mask, K, GROUP_BLOCK)
        # Stored shifts are finite and <= shift, so exp() <= 1; padding rows give
        # exp(-inf) * 0 = 0.
        g_shift = tl.load(ptrs, mask=tile_mask, other=float("-inf"))
        g_sum = tl.load(ptrs + K, mask=tile_mask, other=0.0)
        s += tl.sum(g_sum * tl.exp(g_shift - shift[None, :]), axis=0)
    lse = shift + tl.log(s)
    if MODE == MERGE_STATS:
        tl.store(out + cols, shift, mask=mask)
        tl.store(out + K + cols, s, mask=mask)
    elif MODE == MERGE_LSE:
        tl.store(log_u + cols, lse, mask=mask)
    elif MODE == MERGE_FIRST:
        tl.store(log_u + cols, -lse - log_k, mask=mask)
    else:  # MERGE_UPDATE
        lu = tl.load(log_u + cols, mask=mask, other=0.0)
        tl.store(log_u + cols, lu + log_b - log_k - lse, mask=mask)


@triton.jit
def _total_kernel(log_u, K, BLOCK: tl.constexpr):
    # iterations = 0: log_u holds the column logsumexps; replace every entry by
    # -logsumexp_k(lse_k), so that codes = B * exp(L + log_u). One program.
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    for k0 in range(0, K, BLOCK):
        cols = k0 + tl.arange(0, BLOCK)
        m = tl.maximum(m, tl.load(log_u + cols, mask=cols < K, other=float("-inf")))
    shift = finite_or_zero(tl.max(m, axis=0))
    s = tl.zeros([BLOCK], tl.float32)
    for k0 in range(0, K, BLOCK):
        cols = k0 + tl.arange(0, BLOCK)
        s += tl.exp(tl.load(log_u + cols, mask=cols < K, other=float("-inf")) - shift)
    value = -(shift + tl.log(tl.sum(s, axis=0)))
    for k0 in range(0, K, BLOCK):
        cols = k0 + tl.arange(0, BLOCK)
        tl.store(log_u + cols, tl.zeros([BLOCK], tl.float32) + value, mask=cols < K)


# --------------------------------------------------------------------------- launchers


def _row_tile(k: int, max_one_tile: int) -> tuple[int, int, bool]:
    """(BLOCK_B, BLOCK_K, ONE_TILE) for kernels that need whole rows."""
    one_tile = k <= max_one_tile
    block_k = triton.next_power_of_2(k) if one_tile else pow2(max_one_tile, 1, _TILE_ELEMENTS)
    block_b = max(1, min(64, _TILE_ELEMENTS // block_k))
    return block_b, block_k, one_tile


def _rows_contiguous(scores: torch.Tensor) -> torch.Tensor:
    return scores if scores.stride(1) == 1 else scores.contiguous()


def _launch_colstats(
    scores: torch.Tensor, log_u: torch.Tensor, epsilon: float, normalize_rows: bool, max_one_tile: int
) -> tuple[torch.Tensor, int]:
    """Per-row-group column statistics: (G, 2, K) fp32 partials and G."""
    b, k = scores.shape
    programs = target_programs(scores.device, interpreted=3)
    if normalize_rows:
        block_b, block_k, one_tile = _row_tile(k, max_one_tile)
        per = triton.cdiv(triton.cdiv(b, min(programs, triton.cdiv(b, block_b))), block_b) * block_b
        groups = triton.cdiv(b, per)
        partial = torch.empty((groups, 2, k), dtype=torch.float32, device=scores.device)
        wrap_triton(_normalized_colstats_kernel)[(groups,)](
            scores, log_u, partial, b, k, scores.stride(0), per, epsilon,
            BLOCK_B=block_b, BLOCK_K=block_k, ONE_TILE=one_tile, num_warps=num_warps(block_b * block_k),
        )  # fmt: skip
        return partial, groups
    block_b, block_k = 32, pow2(k, 1, 128)
    col_tiles = triton.cdiv(k, block_k)
    want = max(1, min(triton.cdiv(b, block_b), triton.cdiv(programs, col_tiles)))
    per = triton.cdiv(triton.cdiv(b, want), block_b) * block_b
    groups = triton.cdiv(b, per)
    partial = torch.empty((groups, 2, k), dtype=torch.float32, device=scores.device)
    wrap_triton(_plain_colstats_kernel)[(groups, col_tiles)](
        scores, log_u, partial, b, k, scores.stride(0), per, epsilon, BLOCK_B=block_b, BLOCK_K=block_k
    )
    return partial, groups


def launch_merge(partial, groups, log_u, mode, *, out=None, log_b=0.0, log_k=0.0) -> None:
    """One merge launch over (G, 2, K) partials; `mode` is one of the MERGE_* constants
    (or its number)."""
    # 64 columns (256 B rows of the tile) x 32 groups per step: K / 64 programs (47 at
    # K = 3000; one 1024-wide program per 1024 columns left 3 programs walking all G
    # groups one by one, latency-bound on a 132-SM GPU).
    k = partial.shape[2]
    block = pow2(k, 1, 64)
    group_block = pow2(groups, 1, 32)
    target = log_u if out is None else out
    wrap_triton(_merge_kernel)[(triton.cdiv(k, block),)](
        partial, groups, k, target, log_u, log_b, log_k, MODE=int(mode), BLOCK=block, GROUP_BLOCK=group_block
    )


def _launch_codes(
    scores: torch.Tensor,
    log_u: torch.Tensor,
    epsilon: float,
    normalize_rows: bool,
    max_one_tile: int,
    scale: float = 1.0,
) -> torch.Tensor:
    b, k = scores.shape
    codes = torch.empty((b, k), dtype=torch.float32, device=scores.device)
    block_b, block_k, one_tile = _row_tile(k, max_one_tile)
    wrap_triton(_codes_kernel)[(triton.cdiv(b, block_b),)](
        scores, log_u, codes, b, k, scores.stride(0), epsilon, scale,
        BLOCK_B=block_b, BLOCK_K=block_k, ONE_TILE=one_tile, NORMALIZE=normalize_rows,
        num_warps=num_warps(block_b * block_k),
    )  # fmt: skip
    return codes


def pipeline(
    scores: torch.Tensor, epsilon: float, iterations: int, max_one_tile: int = MAX_ONE_TILE
) -> torch.Tensor:
    """The fused op with a chosen register tile width (tests force the wide-row path
    with a narrow one)."""
    scores = _rows_contiguous(scores)
    b, k = scores.shape
    log_b = math.log(b)
    log_k = math.log(k)
    log_u = torch.zeros(k, dtype=torch.float32, device=scores.device)
    partial, groups = _launch_colstats(scores, log_u, epsilon, False, max_one_tile)
    if iterations == 0:
        launch_merge(partial, groups, log_u, MERGE_LSE)
        wrap_triton(_total_kernel)[(1,)](log_u, k, BLOCK=pow2(k, 1, 1024))
        # B * exp(L - total): B outside the exp keeps the exponent's rounding small.
        return _launch_codes(scores, log_u, epsilon, False, max_one_tile, float(b))
    launch_merge(partial, groups, log_u, MERGE_FIRST, log_k=log_k)
    for _ in range(iterations - 1):
        partial, groups = _launch_colstats(scores, log_u, epsilon, True, max_one_tile)
        launch_merge(partial, groups, log_u, MERGE_UPDATE, log_b=log_b, log_k=log_k)
    return _launch_codes(scores, log_u, epsilon, True, max_one_tile)


# ------------------------------------------------- one launcher per schema op (csrc/ops.cpp)


def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    return pipeline(scores, epsilon, iterations)


def sinkhorn_colstats(
    scores: torch.Tensor, log_u: torch.Tensor, epsilon: float, normalize_rows: bool
) -> torch.Tensor:
    scores = _rows_contiguous(scores)
    log_u = log_u.to(torch.float32).contiguous()
    partial, groups = _launch_colstats(scores, log_u, epsilon, normalize_rows, MAX_ONE_TILE)
    out = torch.empty((2, scores.shape[1]), dtype=torch.float32, device=scores.device)
    launch_merge(partial, groups, log_u, MERGE_STATS, out=out)
    return out


def sinkhorn_codes(
    scores: torch.Tensor, log_u: torch.Tensor, epsilon: float, normalize_rows: bool
) -> torch.Tensor:
    log_u = log_u.to(torch.float32).contiguous()
    return _launch_codes(_rows_contiguous(scores), log_u, epsilon, normalize_rows, MAX_ONE_TILE)

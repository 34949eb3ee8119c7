"""Sinkhorn-Knopp codes on Triton: kernels, then launchers (plain functions, tensors in
and out; one per schema op of csrc/ops.cpp, named like it). The algorithm is the one of
every backend (seer_kernels/ops/sinkhorn.py); registers nothing. docs/sinkhorn-gpu.md has
the design, the launch and byte counts per shape and the predicted times.

One kernel, `_sinkhorn_kernel`, holds the three phases of T iterations on (A, B, K) scores
(A crops, each its own problem; 2-D scores are A = 1):

  PHASE_COLUMNS  pass 0, column tiles in parallel: each program owns whole columns, so the
                 column logsumexp needs no merge across programs. It stores log_u_0 and
                 zeroes the accumulators of the later passes (no fill launch).
  PHASE_ROWS     pass t, 1 <= t < T, row groups in parallel: row softmax, column sums of the
                 group added to the pass's accumulator as integers on a fixed-point scale
                 (integer addition is associative, so the sums, hence the codes, are bitwise
                 the same whatever order the programs finish in, and no program has to wait
                 for the others to merge). The next phase turns the sums into log_u.
  PHASE_CODES    codes = softmax_k(scores / eps + log_u), row blocks in parallel.

`pipeline` launches the kernel once per phase: T + 1 launches (2 for T = 0), two
allocations (the codes and one workspace), no fill, no host sync. `PHASE_ALL` runs every
phase in ONE launch, with a grid barrier between phases: a cooperative launch whose grid is
no larger than what is co-resident, for matrices that stay in L2 between passes
(`onchip_pipeline`). The interpreter runs a grid's programs one after another, where a grid
barrier would wait forever, so the tests run the same phase bodies through `pipeline`.

Bytes per pass, (B, K) scores of s bytes: each pass reads B*K*s (from L2 when it fits);
pass t also reads and writes a few K-vectors per program (log_u and the accumulator:
8 bytes per column per program for the atomics); the codes phase builds each crop's log_u
once per program (per row block for rows wider than 8192) and writes B*K*4. A whole row
tile (K <= 8192) stays in registers, so each pass reads the scores once; wider rows take
a second, cache-resident read of the row tile and keep the group's column sums in a
program-private row of the workspace.

Fixed point: pass t's column sums total B (each row's softmax sums to 1), and each column's
sum is at least 1/K (seer_kernels/ops/sinkhorn.py), so an int64 scale of 2^F with
F = 60 - ceil(log2 B) holds every total below 2^61 with a resolution of 2^-F: at B = 4096,
2^-48 = 3.6e-15, about 1e-11 of the smallest sum at K = 3000. A NaN sum (NaN scores) sets
bit 62 instead (atomic or), which reads back as NaN, so NaN still reaches every code.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from seer_kernels._interpreter import triton_interpreted, wrap_triton
from seer_kernels.triton._common import (
    as_fp32,
    finite_or_zero,
    gpu_properties,
    grid_barrier,
    num_warps,
    online_logsumexp,
    pow2,
    programs_per_sm,
    target_programs,
)

# constexpr globals: a jitted kernel may read only those, and branches on them at compile time.
PHASE_COLUMNS = tl.constexpr(0)
PHASE_ROWS = tl.constexpr(1)
PHASE_CODES = tl.constexpr(2)
PHASE_ALL = tl.constexpr(3)
# Where a phase's log_u comes from: an (A, K) tensor given to the building-block ops (the
# distributed path), the passes of this launch, or, for T = 0, the total of the column
# logsumexps (codes = B exp(L - total), SwAV's normalization alone).
LU_GIVEN = tl.constexpr(0)
LU_PASSES = tl.constexpr(1)
LU_TOTAL = tl.constexpr(2)
# What the column phase stores: log_u_0 (or the column logsumexp for T = 0), or the
# (shift, sum) statistics of the colstats op.
COL_LOG_U = tl.constexpr(0)
COL_STATS = tl.constexpr(1)
# What the row phase does with a group's column sums: add them to the fixed-point
# accumulator of the pass, or store them as the group's partial row (the colstats op,
# merged by _sum_groups_kernel).
ROW_ATOMIC = tl.constexpr(0)
ROW_PARTIAL = tl.constexpr(1)
POISON = tl.constexpr(1 << 62)  # bit 62 of an accumulator: a NaN was added

# Widest row tile kept in registers whole (one read per pass); wider rows loop over
# WIDE_TILE-column tiles of several rows. 8192 columns on 8 warps is 32 values per thread
# per row vector: log_u, the column sums, z and the addresses fit in registers without
# spilling (benchmarks/results/triton-resources-sm90.md; 16384 on 16 warps spilled).
MAX_ONE_TILE = 8192
WIDE_TILE = 1024
_TILE_ELEMENTS = 4096

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _load_z(scores, lu, row0, cols, row_end, K, stride_b, eps, ROWS: tl.constexpr):
    # z = scores / eps + log_u on rows row0 .. row0 + ROWS at `cols`; -inf outside, so it
    # adds nothing. One 64-bit row base and 32-bit offsets inside the tile (which spans
    # far fewer than 2^31 elements): an address costs one register per element, not two.
    rows = tl.arange(0, ROWS)
    mask = (row0 + rows < row_end)[:, None] & (cols < K)[None, :]
    ptrs = scores + tl.cast(row0, tl.int64) * stride_b + (rows[:, None] * stride_b + cols[None, :])
    x = tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32)
    # The reference divides fp32 scores by eps rounded to fp32, so both do that here.
    return tl.div_rn(x, as_fp32(eps)) + lu[None, :]


@triton.jit
def _pass_sum(acc, cols, mask, inv_fx):
    # A pass's column sums from its fixed-point accumulator (NaN where poisoned). Read
    # past L1 (.cg): other programs' atomics wrote them at L2.
    fixed = tl.load(acc + cols, mask=mask, other=0, cache_modifier=".cg")
    total = (fixed.to(tl.float64) * inv_fx).to(tl.float32)
    return tl.where((fixed >> 62) != 0, float("nan"), total)


@triton.jit
def _log_u(lu, acc, p, cols, K, log_c, inv_fx, LU: tl.constexpr):
    # log_u after pass p (p >= 0) at `cols` of one crop. LU_PASSES: pass 0 stored log_u_0
    # in slot 0; log_u_p = log_u_{p-1} + log(B/K) - log S_p, with log_u_{p-1} in slot
    # (p - 1) % 2 and S_p in accumulator row p - 1. LU_GIVEN: the crop's given log_u.
    mask = cols < K
    if LU == LU_GIVEN:
        out = tl.load(lu + cols, mask=mask, other=0.0)
    else:
        if p == 0:
            out = tl.load(lu + cols, mask=mask, other=0.0, cache_modifier=".cg")
        else:
            out = tl.load(lu + ((p - 1) % 2) * K + cols, mask=mask, other=0.0, cache_modifier=".cg")
            out = out + as_fp32(log_c) - tl.log(_pass_sum(acc + (p - 1) * K, cols, mask, inv_fx))
    # Padding columns get 0 (not log 0 = -inf's negation): their scores load as -inf.
    return tl.where(mask, out, 0.0)


@triton.jit
def _columns(
    scores, lu, acc, out, A, B, K, stride_a, stride_b, eps, log_k, n_acc,
    LU: tl.constexpr, OUT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # Pass 0 on (crop, column tile) items, strided over the grid: per-column running max
    # and sum of exp(z - shift) over all B rows, rescaled as the max moves.
    col_tiles = tl.cdiv(K, BLOCK_C)
    for item in range(tl.program_id(0), A * col_tiles, tl.num_programs(0)):
        a = item // col_tiles
        cols = (item % col_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = cols < K
        src = scores + tl.cast(a, tl.int64) * stride_a
        given = tl.zeros([BLOCK_C], tl.float32)
        if OUT == COL_STATS:
            given = tl.load(lu + a * K + cols, mask=mask, other=0.0)
        run_max = tl.full([BLOCK_C], float("-inf"), tl.float32)
        run_sum = tl.zeros([BLOCK_C], tl.float32)
        for r in range(0, B, BLOCK_R):
            z = _load_z(src, given, r, cols, B, K, stride_b, eps, BLOCK_R)
            run_max, run_sum = online_logsumexp(run_max, run_sum, z, 0)
        shift = finite_or_zero(run_max)
        if OUT == COL_STATS:
            tl.store(out + a * 2 * K + cols, shift, mask=mask)
            tl.store(out + a * 2 * K + K + cols, run_sum, mask=mask)
        else:
            lse = shift + tl.log(run_sum)
            if LU == LU_TOTAL:
                tl.store(lu + a * 2 * K + cols, lse, mask=mask)
            else:
                tl.store(lu + a * 2 * K + cols, -lse - as_fp32(log_k), mask=mask)
            # The accumulators of passes 1 .. T-1 start at 0: this phase runs before them.
            for j in range(0, n_acc):
                tl.store(
                    acc + tl.cast(a * n_acc + j, tl.int64) * K + cols,
                    tl.zeros([BLOCK_C], tl.int64),
                    mask=mask,
                )


@triton.jit
def _row_shift_and_inv_sum(
    src, lu, acc, p, row0, row_end, K, stride_b, eps, log_c, inv_fx,
    LU: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # Online row logsumexp over column tiles: returns (shift, 1 / sum exp(z - shift)).
    run_max = tl.full([BLOCK_B], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_B], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        lu_t = _log_u(lu, acc, p, cols, K, log_c, inv_fx, LU)
        z = _load_z(src, lu_t, row0, cols, row_end, K, stride_b, eps, BLOCK_B)
        run_max, run_sum = online_logsumexp(run_max, run_sum, z, 1)
    return finite_or_zero(run_max), 1.0 / run_sum


@triton.jit
def _flush(dst, cols, mask, colsum, fx, OUT: tl.constexpr):
    # A group's column sums: added to the pass's fixed-point accumulator (a NaN sum
    # poisons it), or stored as the group's partial row.
    if OUT == ROW_ATOMIC:
        finite = colsum == colsum
        fixed = (colsum.to(tl.float64) * fx + 0.5).to(tl.int64)
        tl.atomic_add(dst + cols, fixed, mask=mask & finite, sem="relaxed")
        poison = tl.full(colsum.shape, POISON, tl.int64)
        tl.atomic_or(dst + cols, poison, mask=mask & (colsum != colsum), sem="relaxed")
    else:
        tl.store(dst + cols, colsum, mask=mask)


@triton.jit
def _rows(
    scores, lu, acc, scratch, t, A, B, K, stride_a, stride_b, eps, log_c, fx, inv_fx, n_acc,
    rows_per_group,
    LU: tl.constexpr, OUT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr,
):  # fmt: skip
    # Pass t on (crop, row group) items: column sums of softmax_k(z) over the group's rows
    # (entries in [0, 1], so no shift: see seer_kernels/ops/sinkhorn.py), z = scores / eps
    # + log_u_{t-1}. ROW_ATOMIC adds them to the crop's accumulator row t - 1;
    # ROW_PARTIAL stores them as the item's row of `scratch`.
    groups = tl.cdiv(B, rows_per_group)
    for item in range(tl.program_id(0), A * groups, tl.num_programs(0)):
        a = item // groups
        g = item % groups
        src = scores + tl.cast(a, tl.int64) * stride_a
        if LU == LU_GIVEN:
            lu_a = lu + a * K
        else:
            lu_a = lu + a * 2 * K
        acc_a = acc + tl.cast(a, tl.int64) * n_acc * K
        row0 = g * rows_per_group
        row_end = tl.minimum(row0 + rows_per_group, B)
        private = scratch + tl.cast(item, tl.int64) * K
        if ONE_TILE:
            cols = tl.arange(0, BLOCK_K)
            lu_t = _log_u(lu_a, acc_a, t - 1, cols, K, log_c, inv_fx, LU)
            if LU == LU_PASSES:  # noqa: SIM102 (constexpr first: compiled out elsewhere)
                if g == 0 and t >= 2:  # log_u_{t-1} for the phases after this one
                    tl.store(lu_a + ((t - 1) % 2) * K + cols, lu_t, mask=cols < K)
            colsum = tl.zeros([BLOCK_K], tl.float32)
            for r in range(row0, row_end, BLOCK_B):
                rows = r + tl.arange(0, BLOCK_B)
                z = _load_z(src, lu_t, r, cols, row_end, K, stride_b, eps, BLOCK_B)
                e = tl.exp(z - tl.max(z, axis=1)[:, None])
                pr = e * (1.0 / tl.sum(e, axis=1))[:, None]
                colsum += tl.sum(tl.where((rows < row_end)[:, None], pr, 0.0), axis=0)
            if OUT == ROW_ATOMIC:
                _flush(acc_a + (t - 1) * K, cols, cols < K, colsum, fx, OUT)
            else:
                _flush(private, cols, cols < K, colsum, fx, OUT)
        else:
            # Wide rows: the group's sums accumulate in its program-private row of
            # `scratch` (L2-resident), flushed to the accumulator once at the end.
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                if LU == LU_PASSES:  # noqa: SIM102 (constexpr first: compiled out elsewhere)
                    if g == 0 and t >= 2:
                        lu_t = _log_u(lu_a, acc_a, t - 1, cols, K, log_c, inv_fx, LU)
                        tl.store(lu_a + ((t - 1) % 2) * K + cols, lu_t, mask=cols < K)
                tl.store(private + cols, tl.zeros([BLOCK_K], tl.float32), mask=cols < K)
            # The row of sums is read and written by the program's threads in whatever
            # layout each loop gets: a CTA barrier orders one loop's stores before the
            # next loop's loads (bar.sync makes a block's global writes visible to it).
            tl.debug_barrier()
            for r in range(row0, row_end, BLOCK_B):
                rows = r + tl.arange(0, BLOCK_B)
                shift, inv_sum = _row_shift_and_inv_sum(
                    src,
                    lu_a,
                    acc_a,
                    t - 1,
                    r,
                    row_end,
                    K,
                    stride_b,
                    eps,
                    log_c,
                    inv_fx,
                    LU,
                    BLOCK_B,
                    BLOCK_K,
                )
                for k0 in range(0, K, BLOCK_K):
                    cols = k0 + tl.arange(0, BLOCK_K)
                    lu_t = _log_u(lu_a, acc_a, t - 1, cols, K, log_c, inv_fx, LU)
                    z = _load_z(src, lu_t, r, cols, row_end, K, stride_b, eps, BLOCK_B)
                    pr = tl.exp(z - shift[:, None]) * inv_sum[:, None]
                    pr = tl.sum(tl.where((rows < row_end)[:, None], pr, 0.0), axis=0)
                    old = tl.load(private + cols, mask=cols < K, other=0.0)
                    tl.store(private + cols, old + pr, mask=cols < K)
                tl.debug_barrier()
            if OUT == ROW_ATOMIC:
                for k0 in range(0, K, BLOCK_K):
                    cols = k0 + tl.arange(0, BLOCK_K)
                    colsum = tl.load(private + cols, mask=cols < K, other=0.0)
                    _flush(acc_a + (t - 1) * K, cols, cols < K, colsum, fx, OUT)


@triton.jit
def _crop_total(lu, K, BLOCK: tl.constexpr):
    # T = 0: logsumexp over k of the crop's column logsumexps (slot 0), one scalar.
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    for k0 in range(0, K, BLOCK):
        cols = k0 + tl.arange(0, BLOCK)
        m = tl.maximum(m, tl.load(lu + cols, mask=cols < K, other=float("-inf"), cache_modifier=".cg"))
    shift = finite_or_zero(tl.max(m, axis=0))
    s = tl.zeros([BLOCK], tl.float32)
    for k0 in range(0, K, BLOCK):
        cols = k0 + tl.arange(0, BLOCK)
        s += tl.exp(tl.load(lu + cols, mask=cols < K, other=float("-inf"), cache_modifier=".cg") - shift)
    return shift + tl.log(tl.sum(s, axis=0))


@triton.jit
def _codes(
    scores, lu, acc, codes, p, A, B, K, stride_a, stride_b, eps, log_c, inv_fx, n_acc, scale,
    LU: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
    ONE_TILE: tl.constexpr,
):  # fmt: skip
    # codes = softmax_k(z) (NORMALIZE) or scale * exp(z) on (crop, BLOCK_B-row block)
    # items, z = scores / eps + log_u_p (LU_TOTAL: - the crop's total logsumexp). A
    # program's items are consecutive blocks of one crop but where they cross into the
    # next: the crop's log_u row (whole rows) and total are built once per crop, not per
    # block (K loads of log_u and of the accumulator each, and K logs).
    blocks = tl.cdiv(B, BLOCK_B)
    scale = as_fp32(scale)
    cached = tl.program_id(0) * 0 - 1  # the crop lu_t and offset hold (none yet)
    offset = tl.zeros([], tl.float32)
    lu_t = tl.zeros([BLOCK_K], tl.float32)
    for item in range(tl.program_id(0), A * blocks, tl.num_programs(0)):
        a = item // blocks
        row0 = (item % blocks) * BLOCK_B
        rows = tl.arange(0, BLOCK_B)
        src = scores + tl.cast(a, tl.int64) * stride_a
        # One 64-bit base for the block's rows, 32-bit offsets inside it.
        dst = codes + (tl.cast(a, tl.int64) * B + row0) * K
        if LU == LU_GIVEN:
            lu_a = lu + a * K
        else:
            lu_a = lu + a * 2 * K
        acc_a = acc + tl.cast(a, tl.int64) * n_acc * K
        if a != cached:
            if LU == LU_TOTAL:
                offset = -_crop_total(lu_a, K, 1024)
            if ONE_TILE:
                if LU == LU_TOTAL:
                    lu_t = tl.zeros([BLOCK_K], tl.float32) + offset
                else:
                    lu_t = _log_u(lu_a, acc_a, p, tl.arange(0, BLOCK_K), K, log_c, inv_fx, LU)
            cached = a
        if ONE_TILE:
            cols = tl.arange(0, BLOCK_K)
            z = _load_z(src, lu_t, row0, cols, B, K, stride_b, eps, BLOCK_B)
            if NORMALIZE:
                e = tl.exp(z - tl.max(z, axis=1)[:, None])
                y = e * (1.0 / tl.sum(e, axis=1))[:, None]
            else:
                y = tl.exp(z) * scale
            mask = (row0 + rows < B)[:, None] & (cols < K)[None, :]
            tl.store(dst + (rows[:, None] * K + cols[None, :]), y, mask=mask)
        else:
            shift = tl.zeros([BLOCK_B], tl.float32)
            inv_sum = tl.zeros([BLOCK_B], tl.float32) + scale
            if NORMALIZE:
                shift, inv_sum = _row_shift_and_inv_sum(
                    src, lu_a, acc_a, p, row0, B, K, stride_b, eps, log_c, inv_fx, LU, BLOCK_B, BLOCK_K
                )
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                if LU == LU_TOTAL:
                    lu_t = tl.zeros([BLOCK_K], tl.float32) + offset
                else:
                    lu_t = _log_u(lu_a, acc_a, p, cols, K, log_c, inv_fx, LU)
                z = _load_z(src, lu_t, row0, cols, B, K, stride_b, eps, BLOCK_B)
                y = tl.exp(z - shift[:, None]) * inv_sum[:, None]
                mask = (row0 + rows < B)[:, None] & (cols < K)[None, :]
                tl.store(dst + (rows[:, None] * K + cols[None, :]), y, mask=mask)


@triton.jit(do_not_specialize=["t", "iterations"])
def _sinkhorn_kernel(
    scores, codes, lu, acc, scratch, sem, iterations, A, B, K, stride_a, stride_b, eps, log_b, log_k,
    fx, inv_fx, rows_per_group, t,
    PHASE: tl.constexpr, TOTAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr,
):  # fmt: skip
    # The pipeline of `iterations` = T passes: one phase per launch (PHASE_COLUMNS,
    # PHASE_ROWS for pass t, PHASE_CODES), or all of them in one cooperative launch
    # (PHASE_ALL). TOTAL: T = 0 (SwAV's total normalization alone).
    log_c = log_b - log_k
    n_acc = tl.maximum(iterations - 1, 0)
    if PHASE == PHASE_COLUMNS or PHASE == PHASE_ALL:  # noqa: SIM109 (constexprs: no `in` in a kernel)
        if TOTAL:
            _columns(scores, lu, acc, lu, A, B, K, stride_a, stride_b, eps, log_k, n_acc,
                     LU_TOTAL, COL_LOG_U, BLOCK_R, BLOCK_C)  # fmt: skip
        else:
            _columns(scores, lu, acc, lu, A, B, K, stride_a, stride_b, eps, log_k, n_acc,
                     LU_PASSES, COL_LOG_U, BLOCK_R, BLOCK_C)  # fmt: skip
    if PHASE == PHASE_ALL:
        grid_barrier(sem)
        for tt in range(1, iterations):
            _rows(scores, lu, acc, scratch, tt, A, B, K, stride_a, stride_b, eps, log_c, fx, inv_fx, n_acc,
                  rows_per_group, LU_PASSES, ROW_ATOMIC, BLOCK_B, BLOCK_K, ONE_TILE)  # fmt: skip
            grid_barrier(sem)
    if PHASE == PHASE_ROWS:
        _rows(scores, lu, acc, scratch, t, A, B, K, stride_a, stride_b, eps, log_c, fx, inv_fx, n_acc,
              rows_per_group, LU_PASSES, ROW_ATOMIC, BLOCK_B, BLOCK_K, ONE_TILE)  # fmt: skip
    if PHASE == PHASE_CODES or PHASE == PHASE_ALL:  # noqa: SIM109
        if TOTAL:
            _codes(scores, lu, acc, codes, 0, A, B, K, stride_a, stride_b, eps, log_c, inv_fx, n_acc, B,
                   LU_TOTAL, False, BLOCK_B, BLOCK_K, ONE_TILE)  # fmt: skip
        else:
            _codes(scores, lu, acc, codes, iterations - 1, A, B, K, stride_a, stride_b, eps, log_c, inv_fx,
                   n_acc, 1.0, LU_PASSES, True, BLOCK_B, BLOCK_K, ONE_TILE)  # fmt: skip


# The building blocks of the distributed path (one pass each; csrc/ops.cpp's contract),
# on the same phase bodies with a given log_u of shape (A, K).


@triton.jit
def _colstats_kernel(
    scores, log_u, out, A, B, K, stride_a, stride_b, eps, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    # Plain pass: out[a] = (shift, sum exp(z - shift)) per column; one program per column
    # tile owns whole columns, so no merge.
    _columns(
        scores,
        log_u,
        out,
        out,
        A,
        B,
        K,
        stride_a,
        stride_b,
        eps,
        0.0,
        0,
        LU_GIVEN,
        COL_STATS,
        BLOCK_R,
        BLOCK_C,
    )


@triton.jit
def _partials_kernel(
    scores, log_u, partial, A, B, K, stride_a, stride_b, eps, rows_per_group,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr,
):  # fmt: skip
    # Normalized pass: each (crop, row group) item's column sums of softmax_k(z), as its
    # row of `partial` (A * groups, K); _sum_groups_kernel adds them up in a fixed order.
    _rows(scores, log_u, partial, partial, 1, A, B, K, stride_a, stride_b, eps, 0.0, 1.0, 1.0, 0,
          rows_per_group, LU_GIVEN, ROW_PARTIAL, BLOCK_B, BLOCK_K, ONE_TILE)  # fmt: skip


@triton.jit
def _sum_groups_kernel(partial, groups, K, out, BLOCK: tl.constexpr, GROUP_BLOCK: tl.constexpr):
    # out[a] = (0, sum over the crop's groups of partial rows), GROUP_BLOCK groups per
    # step as a tile (serial depth G / GROUP_BLOCK), in the same order on every run.
    a = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < K
    s = tl.zeros([BLOCK], tl.float32)
    for g0 in range(0, groups, GROUP_BLOCK):
        g = g0 + tl.arange(0, GROUP_BLOCK)
        ptrs = partial + tl.cast(a * groups + g, tl.int64)[:, None] * K + cols[None, :]
        s += tl.sum(tl.load(ptrs, mask=(g < groups)[:, None] & mask[None, :], other=0.0), axis=0)
    tl.store(out + a * 2 * K + cols, tl.zeros([BLOCK], tl.float32), mask=mask)
    tl.store(out + a * 2 * K + K + cols, s, mask=mask)


@triton.jit
def _codes_kernel(
    scores, log_u, codes, A, B, K, stride_a, stride_b, eps,
    NORMALIZE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr,
):  # fmt: skip
    _codes(scores, log_u, log_u, codes, 0, A, B, K, stride_a, stride_b, eps, 0.0, 1.0, 0, 1.0,
           LU_GIVEN, NORMALIZE, BLOCK_B, BLOCK_K, ONE_TILE)  # fmt: skip


# --------------------------------------------------------------------------- launchers


def _row_tile(k: int, max_one_tile: int) -> tuple[int, int, bool]:
    """(BLOCK_B, BLOCK_K, ONE_TILE) for phases that need whole rows."""
    one_tile = k <= max_one_tile
    block_k = triton.next_power_of_2(k) if one_tile else pow2(max_one_tile, 1, WIDE_TILE)
    block_b = max(1, min(64, _TILE_ELEMENTS // block_k))
    return block_b, block_k, one_tile


def _row_warps(one_tile: bool) -> int:
    """Warps per program of a whole-row pass. It holds log_u, the column sums and a row
    tile, and flushes 64-bit fixed-point sums: on 4 or 8 warps ptxas capped its registers
    below what that needs and spilled (by its own occupancy heuristic: 168 registers and
    16 bytes of spills at K = 3000 on 4 warps, 80 and 4 on 8), on 16 it does not; the
    wide-row tiles fit 4 warps. benchmarks/results/triton-resources-sm90.md has every
    configuration's registers and spills."""
    return 16 if one_tile else 4


def _column_tile(a: int, k: int, programs: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_C) for the column phase: tiles narrow enough that the crops'
    column tiles give about `programs` programs (16 columns = 64-byte rows at least, so
    each row segment is whole 32-byte sectors), BLOCK_R rows per step."""
    want = max(1, k * a // max(programs, 1))
    block_c = max(16, min(128, 1 << (want.bit_length() - 1)))
    return _TILE_ELEMENTS // block_c, block_c


# Fewest rows a row group takes (where there are that many): each group adds K atomics
# per pass, so groups of 16 rows or more keep them to a 16th of the elements read.
MIN_GROUP_ROWS = 16


def _row_groups(a: int, b: int, block_b: int, programs: int) -> tuple[int, int]:
    """(rows per group, groups per crop): whole BLOCK_B blocks, about `programs` items,
    at least MIN_GROUP_ROWS rows each."""
    want = max(1, min(triton.cdiv(b, max(block_b, MIN_GROUP_ROWS)), triton.cdiv(programs, a)))
    per = triton.cdiv(triton.cdiv(b, want), block_b) * block_b
    return per, triton.cdiv(b, per)


def _crops(scores: torch.Tensor) -> tuple[torch.Tensor, int, int, int, int]:
    """Scores with unit column stride, as (tensor, A, B, K, crop stride); 2-D is A = 1."""
    if scores.stride(-1) != 1:
        scores = scores.contiguous()
    if scores.dim() == 2:
        return scores, 1, scores.shape[0], scores.shape[1], 0
    return scores, scores.shape[0], scores.shape[1], scores.shape[2], scores.stride(0)


def fixed_point_scale(b: int) -> int:
    """F of the accumulators' 2^F scale: every total (at most B) stays below 2^61."""
    return 60 - max(0, (b - 1).bit_length())


class _Plan:
    """Launch configuration and workspace layout of one pipeline call."""

    def __init__(self, scores: torch.Tensor, iterations: int, max_one_tile: int, programs: int) -> None:
        self.scores, self.a, self.b, self.k, self.stride_a = _crops(scores)
        self.iterations = iterations
        self.block_b, self.block_k, self.one_tile = _row_tile(self.k, max_one_tile)
        self.block_r, self.block_c = _column_tile(self.a, self.k, programs)
        self.n_acc = max(iterations - 1, 0)
        self.scale = fixed_point_scale(self.b)
        self.regroup(programs)

    def regroup(self, programs: int) -> None:
        """Split each crop's rows into groups for about `programs` row-phase items."""
        self.rows_per_group, self.groups = _row_groups(self.a, self.b, self.block_b, programs)

    def items(self) -> int:
        """The most work items of any phase (a cooperative grid needs no more programs)."""
        col_tiles = triton.cdiv(self.k, self.block_c)
        return self.a * max(col_tiles, self.groups, triton.cdiv(self.b, self.block_b))

    def workspace(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One allocation: log_u slots (A, 2, K) fp32, accumulators (A, T-1, K) int64 and,
        for wide rows, the groups' private rows (A * groups, K) fp32."""
        a, k = self.a, self.k
        lu_words = a * k  # (A, 2, K) fp32 in int64 words
        acc_words = max(1, a * self.n_acc * k)
        scratch_words = 1 if self.one_tile else triton.cdiv(a * self.groups * k, 2)
        ws = torch.empty(lu_words + acc_words + scratch_words, dtype=torch.int64, device=self.scores.device)
        lu = ws[:lu_words].view(torch.float32)
        acc = ws[lu_words : lu_words + acc_words]
        scratch = ws[lu_words + acc_words :].view(torch.float32)
        return lu, acc, scratch

    def args(self, codes, lu, acc, scratch, sem, epsilon: float) -> tuple:
        s = self.scores
        return (
            s, codes, lu, acc, scratch, sem, self.iterations, self.a, self.b, self.k,
            self.stride_a, s.stride(-2), epsilon, math.log(self.b), math.log(self.k),
            float(2**self.scale), float(2.0**-self.scale), self.rows_per_group,
        )  # fmt: skip

    def constexprs(self, phase: int) -> dict:
        return {
            "PHASE": phase,
            "TOTAL": self.iterations == 0,
            "BLOCK_R": self.block_r,
            "BLOCK_C": self.block_c,
            "BLOCK_B": self.block_b,
            "BLOCK_K": self.block_k,
            "ONE_TILE": self.one_tile,
        }

    def warps(self, phase: int) -> int:
        """Warps per program of a phase (whole-row passes: _row_warps)."""
        if phase == PHASE_COLUMNS:
            return num_warps(self.block_r * self.block_c)
        if phase == PHASE_CODES:
            return num_warps(self.block_b * self.block_k)
        return _row_warps(self.one_tile)


def pipeline(
    scores: torch.Tensor,
    epsilon: float,
    iterations: int,
    max_one_tile: int = MAX_ONE_TILE,
    programs: int | None = None,
) -> torch.Tensor:
    """The fused op, one launch per phase: T + 1 launches (2 for T = 0), the codes and one
    workspace allocated, nothing filled, no host sync. (B, K) or (A, B, K) scores.
    Tests force the wide-row path with a narrow `max_one_tile`, and the split of the work
    with `programs` (default: about two per SM; a few under the interpreter)."""
    programs = programs or target_programs(scores.device, interpreted=3)
    plan = _Plan(scores, iterations, max_one_tile, programs)
    codes = torch.empty(plan.scores.shape, dtype=torch.float32, device=scores.device)
    lu, acc, scratch = plan.workspace()
    args = plan.args(codes, lu, acc, scratch, acc, epsilon)
    a = plan.a
    kernel = wrap_triton(_sinkhorn_kernel)
    kernel[(a * triton.cdiv(plan.k, plan.block_c),)](
        *args, 0, **plan.constexprs(PHASE_COLUMNS), num_warps=plan.warps(PHASE_COLUMNS)
    )
    for t in range(1, iterations):
        kernel[(a * plan.groups,)](*args, t, **plan.constexprs(PHASE_ROWS), num_warps=plan.warps(PHASE_ROWS))
    # About `programs` programs, each over consecutive row blocks (one log_u row per crop).
    kernel[(min(a * triton.cdiv(plan.b, plan.block_b), programs),)](
        *args, 0, **plan.constexprs(PHASE_CODES), num_warps=plan.warps(PHASE_CODES)
    )
    return codes


# The cooperative launch's grid barrier word, per device: zeroed once when first needed;
# every barrier leaves it at 0 or 2^31, which is all the next one needs (_common.grid_barrier).
_SEMAPHORES: dict = {}


def _semaphore(device: torch.device) -> torch.Tensor:
    from torch._guards import detect_fake_mode

    key = (device, id(detect_fake_mode()))
    if key not in _SEMAPHORES:
        _SEMAPHORES[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return _SEMAPHORES[key]


def fits_on_chip(scores: torch.Tensor) -> bool:
    """Whether the scores stay in the GPU's L2 between passes (the case of the one-launch
    path): the phases after the first then read the scores from L2, not from DRAM."""
    props = gpu_properties(scores.device)
    return props is not None and scores.numel() * scores.element_size() <= props.L2_cache_size


def resident_programs(compiled, device: torch.device) -> int:
    """Programs of a compiled kernel that fit on the GPU at once (the cooperative grid's
    bound), from its registers, shared memory and warps."""
    props = gpu_properties(device)
    per_sm = programs_per_sm(compiled.n_regs, compiled.metadata.shared, compiled.metadata.num_warps, props)
    return max(1, per_sm) * props.multi_processor_count


# The one-launch path's co-resident programs per device, dtype, alignment of B and K (which
# Triton specializes on), configuration and warps: the kernel is compiled and measured on
# the first call of a configuration, not on each.
_RESIDENT: dict = {}


def _resident(plan: _Plan, codes, sem, epsilon: float, warps: int) -> int:
    s = plan.scores
    key = (s.device, s.dtype, plan.b % 16 == 0, plan.k % 16 == 0, *plan.constexprs(PHASE_ALL).items(), warps)
    if key not in _RESIDENT:
        lu, acc, scratch = plan.workspace()
        compiled = _sinkhorn_kernel.warmup(
            *plan.args(codes, lu, acc, scratch, sem, epsilon), 0, **plan.constexprs(PHASE_ALL),
            num_warps=warps, grid=(1,),
        )  # fmt: skip
        compiled._init_handles()
        _RESIDENT[key] = resident_programs(compiled, s.device)
    return _RESIDENT[key]


def onchip_pipeline(
    scores: torch.Tensor,
    epsilon: float,
    iterations: int,
    programs: int | None = None,
    *,
    phased: bool = False,
) -> torch.Tensor:
    """The fused op in ONE launch: every phase in a cooperative kernel, grid barriers
    between them, the grid no larger than what is co-resident (from the compiled kernel's
    registers, shared memory and warps; `programs` sets it instead, as the launch audit
    does on fake tensors).

    `phased=True` launches the same persistent grid once per phase instead (no barrier):
    how the interpreter, which runs a grid's programs one after another (a grid barrier
    would wait forever there), tests the phase bodies with this path's split of the work."""
    from torch._subclasses.fake_tensor import is_fake

    if triton_interpreted() and not phased:
        raise RuntimeError(
            "onchip_pipeline needs a GPU: the interpreter runs a grid's programs one at a time (use phased=True)"
        )
    target = target_programs(scores.device, interpreted=3)
    plan = _Plan(scores, iterations, MAX_ONE_TILE, programs or target)
    codes = torch.empty(plan.scores.shape, dtype=torch.float32, device=scores.device)
    sem = _semaphore(scores.device)
    warps = plan.warps(PHASE_ALL)
    if programs is None and not phased and not is_fake(scores):
        programs = _resident(plan, codes, sem, epsilon, warps)
    programs = min(programs or target, plan.items())
    plan.regroup(programs)
    lu, acc, scratch = plan.workspace()
    args = plan.args(codes, lu, acc, scratch, sem, epsilon)
    kernel = wrap_triton(_sinkhorn_kernel)[(programs,)]
    if not phased:
        kernel(*args, 0, **plan.constexprs(PHASE_ALL), num_warps=warps, launch_cooperative_grid=True)
        return codes
    kernel(*args, 0, **plan.constexprs(PHASE_COLUMNS), num_warps=warps)
    for t in range(1, iterations):
        kernel(*args, t, **plan.constexprs(PHASE_ROWS), num_warps=warps)
    kernel(*args, 0, **plan.constexprs(PHASE_CODES), num_warps=warps)
    return codes


# ------------------------------------------------- one launcher per schema op (csrc/ops.cpp)


def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    return pipeline(scores, epsilon, iterations)


def _given_log_u(log_u: torch.Tensor) -> torch.Tensor:
    return log_u.to(torch.float32).contiguous()


def sinkhorn_colstats(
    scores: torch.Tensor, log_u: torch.Tensor, epsilon: float, normalize_rows: bool
) -> torch.Tensor:
    s, a, b, k, stride_a = _crops(scores)
    log_u = _given_log_u(log_u)
    out = torch.empty((*scores.shape[:-2], 2, k), dtype=torch.float32, device=scores.device)
    programs = target_programs(scores.device, interpreted=3)
    if not normalize_rows:
        block_r, block_c = _column_tile(a, k, programs)
        wrap_triton(_colstats_kernel)[(a * triton.cdiv(k, block_c),)](
            s, log_u, out, a, b, k, stride_a, s.stride(-2), epsilon, BLOCK_R=block_r, BLOCK_C=block_c
        )
        return out
    block_b, block_k, one_tile = _row_tile(k, MAX_ONE_TILE)
    per, groups = _row_groups(a, b, block_b, programs)
    partial = torch.empty((a * groups, k), dtype=torch.float32, device=scores.device)
    wrap_triton(_partials_kernel)[(a * groups,)](
        s, log_u, partial, a, b, k, stride_a, s.stride(-2), epsilon, per,
        BLOCK_B=block_b, BLOCK_K=block_k, ONE_TILE=one_tile, num_warps=_row_warps(one_tile),
    )  # fmt: skip
    block = pow2(k, 1, 64)
    wrap_triton(_sum_groups_kernel)[(triton.cdiv(k, block), a)](
        partial, groups, k, out, BLOCK=block, GROUP_BLOCK=pow2(groups, 1, 32)
    )
    return out


def sinkhorn_codes(
    scores: torch.Tensor, log_u: torch.Tensor, epsilon: float, normalize_rows: bool
) -> torch.Tensor:
    s, a, b, k, stride_a = _crops(scores)
    log_u = _given_log_u(log_u)
    codes = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
    block_b, block_k, one_tile = _row_tile(k, MAX_ONE_TILE)
    programs = min(a * triton.cdiv(b, block_b), target_programs(scores.device, interpreted=3))
    wrap_triton(_codes_kernel)[(programs,)](
        s, log_u, codes, a, b, k, stride_a, s.stride(-2), epsilon,
        NORMALIZE=normalize_rows, BLOCK_B=block_b, BLOCK_K=block_k, ONE_TILE=one_tile,
        num_warps=num_warps(block_b * block_k),
    )  # fmt: skip
    return codes

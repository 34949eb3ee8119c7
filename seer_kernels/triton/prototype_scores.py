"""Cosine prototype scores on Triton: kernels, then launchers (plain functions, tensors
in and out; one per schema op of csrc/ops.cpp, named like it). Registers nothing.

E (N, D), P (K, D), G = d loss / d scores (N, K); rn = 1 / max(||x||, 1e-12) per row
(fp32, fp64 for fp64 input: seer_kernels/_dtypes.py; ones when normalize is false).
  forward   one launch computes rn_e and rn_p (a row-block program per BLOCK_M rows of
            either operand); one tiled GEMM reads the RAW operands (tl.dot, fp32
            accumulation, tensor cores for fp16/bf16) and scales its (BLOCK_N, BLOCK_K)
            accumulator by rn_e[:, None] * rn_p[None, :] in the epilogue.
            bytes: 2 (N + K) D s reads + N K s write (+ L2-served tile re-reads);
            FLOPs 2 N K D.
  backward  d_x = proj_x(G_x @ (rn_y * Y)), for (x, y, G_x) = (E, P, G) and (P, E, G^T).
            The K-reduction loads each Y tile and scales its rows by rn_y before tl.dot
            (a normalized copy is never written; scaling Y rather than G because
            |rn_y y| <= 1 cannot overflow fp16, while rn_y * G can for a zero row with
            rn_y = 1e12). When one BLOCK_D tile covers D and the rows give enough
            programs, the epilogue applies the projection
                d_x = rn (d - x_hat <x_hat, d>)   (||x|| >= eps),   rn d   (||x|| < eps)
            on the accumulator (it has the whole row); otherwise the reduction is split
            over R (more programs for small M) and/or D is tiled, fp32 partials go to a
            scratch (S, M, D) and a finishing kernel sums them and projects.
            The projection's row sums and update run in fp64 (exact products of fp32
            values): where d is nearly parallel to x (D = 1 exactly) fp32 scalars would
            leave a few ulp of |d| rn where the true gradient is ~0.
            bytes: G read twice (2 N K s), E and P read ~2x, d_E and d_P written once;
            FLOPs 4 N K D.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seer_kernels._dtypes import accumulation_dtype
from seer_kernels._interpreter import wrap_triton
from seer_kernels.triton._common import NORMALIZE_EPS as EPS
from seer_kernels.triton._common import (
    dot_precision,
    inverse_norm,
    pow2,
    project_rows,
    row_sums_f64,
    target_programs,
)

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _rnorm_rows(
    x_ptr, rn_ptr, block, M, D, s_m, s_d, EPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr
):
    """rn = 1 / max(||x||, eps) for BLOCK_M rows; accumulates in rn's dtype."""
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    ss = tl.zeros((BLOCK_M,), rn_ptr.dtype.element_ty)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (cols[None, :] < D)
        x = tl.load(x_ptr + rows[:, None] * s_m + cols[None, :] * s_d, mask=mask, other=0.0)
        x = x.to(ss.dtype)
        ss += tl.sum(x * x, axis=1)
    tl.store(rn_ptr + rows, inverse_norm(ss, EPS), mask=row_ok)


@triton.jit
def _rnorm_kernel(
    e_ptr,
    p_ptr,
    rn_e_ptr,
    rn_p_ptr,
    N,
    K,
    D,
    s_en,
    s_ed,
    s_pk,
    s_pd,
    E_BLOCKS,
    EPS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Inverse row norms of both operands in one launch: the first E_BLOCKS programs
    take embedding rows, the rest prototype rows."""
    pid = tl.program_id(0)
    if pid < E_BLOCKS:
        _rnorm_rows(e_ptr, rn_e_ptr, pid, N, D, s_en, s_ed, EPS, BLOCK_M, BLOCK_D)
    else:
        _rnorm_rows(p_ptr, rn_p_ptr, pid - E_BLOCKS, K, D, s_pk, s_pd, EPS, BLOCK_M, BLOCK_D)


@triton.jit
def _grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (row tile, column tile), GROUP_M row tiles at a time so that
    consecutive programs share operand tiles in L2."""
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = min(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_m, (pid % per_group) // group_m


@triton.jit
def _scores_kernel(
    e_ptr,
    p_ptr,
    rn_e_ptr,
    rn_p_ptr,
    out_ptr,
    N,
    K,
    D,
    s_en,
    s_ed,
    s_pk,
    s_pd,
    s_on,
    s_ok,
    NORMALIZE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP_N: tl.constexpr,
):
    """out[n, k] = rn_e[n] rn_p[k] <e[n], p[k]>: raw operands in, scaled epilogue."""
    tile_n, tile_k = _grouped_tile(tl.program_id(0), N, K, BLOCK_N, BLOCK_K, GROUP_N)
    rows = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tile_k * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), rn_e_ptr.dtype.element_ty)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        a_mask = (rows[:, None] < N) & (ds[None, :] < D)
        b_mask = (ds[:, None] < D) & (cols[None, :] < K)
        a = tl.load(e_ptr + rows[:, None] * s_en + ds[None, :] * s_ed, mask=a_mask, other=0.0)
        b = tl.load(p_ptr + ds[:, None] * s_pd + cols[None, :] * s_pk, mask=b_mask, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if NORMALIZE:
        rn_e = tl.load(rn_e_ptr + rows, mask=rows < N, other=0.0)
        rn_p = tl.load(rn_p_ptr + cols, mask=cols < K, other=0.0)
        acc = acc * rn_e[:, None] * rn_p[None, :]
    offs = rows[:, None].to(tl.int64) * s_on + cols[None, :] * s_ok
    mask = (rows[:, None] < N) & (cols[None, :] < K)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_kernel(
    g_ptr,
    y_ptr,
    rn_y_ptr,
    x_ptr,
    rn_x_ptr,
    out_ptr,
    M,
    R,
    D,
    R_SPLIT,
    s_gm,
    s_gr,
    s_yr,
    s_yd,
    s_xm,
    s_xd,
    s_os,
    s_om,
    s_od,
    NORMALIZE: tl.constexpr,
    PROJECT: tl.constexpr,
    PRECISION: tl.constexpr,
    EPS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """d_x_hat[m, :] = sum_r G[m, r] rn_y[r] y[r, :] over this program's R slice;
    projected into d_x in the epilogue when PROJECT (one D tile, one R slice)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    split = tl.program_id(2)
    row_ok = rows < M
    col_ok = cols < D
    g_rows = g_ptr + rows[:, None].to(tl.int64) * s_gm
    acc = tl.zeros((BLOCK_M, BLOCK_D), rn_x_ptr.dtype.element_ty)
    r_end = min(split * R_SPLIT + R_SPLIT, R)
    for r0 in range(split * R_SPLIT, r_end, BLOCK_R):
        rs = r0 + tl.arange(0, BLOCK_R)
        r_ok = rs < r_end
        # int64: the transposed view of G walks N K elements with stride K.
        g_offs = rs[None, :].to(tl.int64) * s_gr
        g = tl.load(g_rows + g_offs, mask=row_ok[:, None] & r_ok[None, :], other=0.0)
        y_mask = r_ok[:, None] & col_ok[None, :]
        y = tl.load(y_ptr + rs[:, None] * s_yr + cols[None, :] * s_yd, mask=y_mask, other=0.0)
        if NORMALIZE:
            rn_y = tl.load(rn_y_ptr + rs, mask=r_ok, other=0.0)
            y = (y.to(acc.dtype) * rn_y[:, None]).to(g.dtype)
        acc = tl.dot(g, y, acc, input_precision=PRECISION)
    mask = row_ok[:, None] & col_ok[None, :]
    if PROJECT:
        x = tl.load(x_ptr + rows[:, None] * s_xm + cols[None, :] * s_xd, mask=mask, other=0.0)
        rn_x = tl.load(rn_x_ptr + rows, mask=row_ok, other=0.0)
        ss, dot = row_sums_f64(x, acc)
        result = project_rows(acc, x, rn_x, ss, dot, EPS)
    else:
        result = acc
    offs = split * s_os + rows[:, None].to(tl.int64) * s_om + cols[None, :] * s_od
    tl.store(out_ptr + offs, result.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _split_sum(part_ptr, rows, cols, mask, M, D, SPLITS):
    """Sum over the S partials of a contiguous (S, M, D) scratch."""
    offs = rows[:, None].to(tl.int64) * D + cols[None, :]
    d = tl.load(part_ptr + offs, mask=mask, other=0.0)
    for s in range(1, SPLITS):
        d += tl.load(part_ptr + s * M * D + offs, mask=mask, other=0.0)
    return d


@triton.jit
def _finish_kernel(
    part_ptr,
    x_ptr,
    rn_x_ptr,
    out_ptr,
    M,
    D,
    SPLITS,
    s_xm,
    s_xd,
    NORMALIZE: tl.constexpr,
    EPS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """d_x from fp32 partials: sum the splits, then (NORMALIZE) one pass for ||x||^2
    and <x, d>, a second to write the projected gradient."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    ss = tl.zeros((BLOCK_M,), tl.float64)
    dot = tl.zeros((BLOCK_M,), tl.float64)
    if NORMALIZE:
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            mask = row_ok[:, None] & (cols[None, :] < D)
            d = _split_sum(part_ptr, rows, cols, mask, M, D, SPLITS)
            x = tl.load(x_ptr + rows[:, None] * s_xm + cols[None, :] * s_xd, mask=mask, other=0.0)
            chunk_ss, chunk_dot = row_sums_f64(x, d)
            ss += chunk_ss
            dot += chunk_dot
    rn_x = tl.load(rn_x_ptr + rows, mask=row_ok, other=0.0)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (cols[None, :] < D)
        d = _split_sum(part_ptr, rows, cols, mask, M, D, SPLITS)
        if NORMALIZE:
            x = tl.load(x_ptr + rows[:, None] * s_xm + cols[None, :] * s_xd, mask=mask, other=0.0)
            d = project_rows(d, x, rn_x, ss, dot, EPS)
        offs = rows[:, None].to(tl.int64) * D + cols[None, :]
        tl.store(out_ptr + offs, d.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launchers

_FUSED_MAX_D = 256  # widest row the backward epilogue projects in registers


def _interpreter_scale(x: torch.Tensor) -> int:
    """Block-size multiplier: the interpreter pays per program and per loop step, not
    per element, so CPU tensors (TRITON_INTERPRET=1) get 4x wider row/reduction blocks."""
    return 1 if x.is_cuda else 4


def _launch_rnorms(e: torch.Tensor, p: torch.Tensor, rn_e: torch.Tensor, rn_p: torch.Tensor) -> None:
    (n, d), k = e.shape, p.shape[0]
    block_m, block_d = 32 * _interpreter_scale(e), pow2(d, 16, 256)
    e_blocks = triton.cdiv(n, block_m)
    grid = (e_blocks + triton.cdiv(k, block_m),)
    wrap_triton(_rnorm_kernel)[grid](
        e,
        p,
        rn_e,
        rn_p,
        n,
        k,
        d,
        e.stride(0),
        e.stride(1),
        p.stride(0),
        p.stride(1),
        e_blocks,
        EPS=EPS,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=4,
    )


def _launch_scores(e, p, rn_e, rn_p, out, normalize: bool) -> None:
    (n, d), k = e.shape, p.shape[0]
    # Reduction tile: 128 bytes of a row per load (64 fp16/bf16, 32 fp32, 16 fp64).
    scale = _interpreter_scale(e)
    block_d = pow2(d, 16, 128 // e.element_size() * scale)
    block_n, block_k = pow2(n, 16, 128), pow2(k, 16, 128 * scale)
    grid = (triton.cdiv(n, block_n) * triton.cdiv(k, block_k),)
    wrap_triton(_scores_kernel)[grid](
        e,
        p,
        rn_e,
        rn_p,
        out,
        n,
        k,
        d,
        e.stride(0),
        e.stride(1),
        p.stride(0),
        p.stride(1),
        out.stride(0),
        out.stride(1),
        NORMALIZE=normalize,
        PRECISION=dot_precision(e),
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_D=block_d,
        GROUP_N=8,
        num_warps=8,
        num_stages=3,
    )


def _launch_grad(g_strides: tuple[int, int], g, x, rn_x, y, rn_y, normalize: bool) -> torch.Tensor:
    """d loss / d x for x (M, D), the other operand y (R, D) and the gradient G_x (M, R)
    given by g and g_strides (G itself or its transpose, no copy)."""
    (m, d), r = x.shape, y.shape[0]
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if m == 0:
        return out
    if r == 0:
        return out.zero_()
    scale = _interpreter_scale(x)
    block_m = pow2(m, 16, 64 * scale)
    block_r = pow2(r, 16, 128 // x.element_size() * scale)
    block_d = pow2(d, 16, _FUSED_MAX_D) if d <= _FUSED_MAX_D else 128
    tiles = triton.cdiv(m, block_m) * triton.cdiv(d, block_d)
    splits = min(triton.cdiv(target_programs(x.device, interpreted=4), tiles), max(1, r // (4 * block_r)), 32)
    r_split = triton.cdiv(triton.cdiv(r, splits), block_r) * block_r
    splits = triton.cdiv(r, r_split)
    project = normalize and splits == 1 and d <= block_d
    direct = project or (not normalize and splits == 1)
    if direct:
        dest, s_os = out, 0
    else:
        dest = torch.empty((splits, m, d), device=x.device, dtype=rn_x.dtype)
        s_os = dest.stride(0)
    grid = (triton.cdiv(m, block_m), triton.cdiv(d, block_d), splits)
    wrap_triton(_grad_kernel)[grid](
        g,
        y,
        rn_y,
        x,
        rn_x,
        dest,
        m,
        r,
        d,
        r_split,
        g_strides[0],
        g_strides[1],
        y.stride(0),
        y.stride(1),
        x.stride(0),
        x.stride(1),
        s_os,
        dest.stride(-2),
        dest.stride(-1),
        NORMALIZE=normalize,
        PROJECT=project,
        PRECISION=dot_precision(x),
        EPS=EPS,
        BLOCK_M=block_m,
        BLOCK_R=block_r,
        BLOCK_D=block_d,
        num_warps=8 if block_d >= 128 else 4,
        num_stages=3,
    )
    if not direct:
        finish_m = 32 * scale
        wrap_triton(_finish_kernel)[(triton.cdiv(m, finish_m),)](
            dest,
            x,
            rn_x,
            out,
            m,
            d,
            splits,
            x.stride(0),
            x.stride(1),
            NORMALIZE=normalize,
            EPS=EPS,
            BLOCK_M=finish_m,
            BLOCK_D=pow2(d, 16, 128),
            num_warps=4,
        )
    return out


# ------------------------------------------------- one launcher per schema op (csrc/ops.cpp)


def prototype_scores(
    embeddings: torch.Tensor, prototypes: torch.Tensor, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, k = embeddings.shape[0], prototypes.shape[0]
    acc = accumulation_dtype(embeddings.dtype)
    scores = embeddings.new_empty((n, k))
    if normalize:
        rn_e = embeddings.new_empty((n,), dtype=acc)
        rn_p = embeddings.new_empty((k,), dtype=acc)
        if n + k > 0:
            _launch_rnorms(embeddings, prototypes, rn_e, rn_p)
    else:
        rn_e = embeddings.new_ones((n,), dtype=acc)
        rn_p = embeddings.new_ones((k,), dtype=acc)
    if n > 0 and k > 0:
        _launch_scores(embeddings, prototypes, rn_e, rn_p, scores, normalize)
    return scores, rn_e, rn_p


def prototype_scores_backward(
    grad: torch.Tensor,
    embeddings: torch.Tensor,
    prototypes: torch.Tensor,
    embeddings_rnorm: torch.Tensor,
    prototypes_rnorm: torch.Tensor,
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    grad = grad.to(embeddings.dtype)  # tl.dot needs one operand dtype
    g_t = (grad.stride(1), grad.stride(0))
    e, p, rn_e, rn_p = embeddings, prototypes, embeddings_rnorm, prototypes_rnorm
    grad_e = _launch_grad((grad.stride(0), grad.stride(1)), grad, e, rn_e, p, rn_p, normalize)
    grad_p = _launch_grad(g_t, grad, p, rn_p, e, rn_e, normalize)
    return grad_e, grad_p

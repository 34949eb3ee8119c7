"""The fused SwAV head on Triton: kernels, then launchers (plain functions, tensors in and
out; one per schema op of csrc/ops.cpp, named like it). The algorithm is the one of every
backend (seer_kernels/ops/prototype_cross_entropy.py); registers nothing.

E (V B rows of D), P (K, D), codes (A, B, K); e = V B, s = element size of E and P, c of
the codes. Two launches give the loss and both gradients (Liger's split: the backward op
only scales them, one more launch):
  rows kernel   one program per BLOCK_R rows of E holds its E block with the whole D
                (BLOCK_D = pow2(D)) and computes its inverse norms in-kernel; pass 1
                streams K in BLOCK_K tiles: S = (E P_tile^T) rn_e rn_p on tl.dot (tensor
                cores for fp16/bf16; TF32 for fp32 when torch allows it), the P tile's
                norms from the tile itself, an online (max, sum exp) per row, R and
                <C, max - s> (the loss's cancellation-free form) from the codes tile.
                Writes lse, R and rn_e per row and the block's loss partial. Pass 2
                recomputes each S tile and accumulates grad_E_hat += G P_hat_tile
                (G = R softmax - C, in the operand dtype for the dot), then projects
                through the normalization in the epilogue (it holds whole rows).
                bytes: E once, P and codes twice per row block (from L2 after the first
                programs); FLOPs 6 BLOCK_R K D per program (3 dots of 2 BLOCK_R BLOCK_K D
                per tile).
  cols kernel   one program per BLOCK_K prototypes holds its P tile with the whole D;
                streams all row blocks: S recomputed, G from the saved lse and R, and
                grad_P_hat += G^T E_hat_block; projects in the epilogue. Program 0 also
                sums the rows kernel's loss partials in index order (the launches are
                ordered on the stream), so the loss is deterministic and needs no
                atomics, no zeroed buffer and no third launch.
                bytes: P once, E and codes once per K tile (L2); FLOPs 4 e BLOCK_K D.
Total: 10 e K D FLOPs (5 GEMMs' worth against the unfused 3: the price of never writing
S or G, which the unfused head writes and reads back, 4 e K bytes each way at fp32), no
(e, K) array, no atomics; every sum in a fixed order.
The backward: one launch scales both saved gradients by grad_loss (read on the device:
no host sync).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seer_kernels._dtypes import accumulation_dtype
from seer_kernels._interpreter import wrap_triton
from seer_kernels.triton._common import NORMALIZE_EPS as EPS
from seer_kernels.triton._common import dot_precision, host_fp32, inverse_norm, loss_norm, pow2

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _codes_tile(
    codes_ptr, b, v, row_ok, k, kmask, s_ca, s_cb, s_ck,
    A: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, acc_t: tl.constexpr,
):  # fmt: skip
    """C_v[b] at columns k for each row (v, b) of the block: the code rows a != v of its
    sample, added in increasing a."""
    c = tl.zeros((BLOCK_R, BLOCK_K), acc_t)
    col = k[None, :].to(tl.int64) * s_ck
    for a in tl.static_range(A):
        ok = row_ok & (v != a)
        offs = a * s_ca + b[:, None].to(tl.int64) * s_cb + col
        c += tl.load(codes_ptr + offs, mask=ok[:, None] & kmask[None, :], other=0.0).to(acc_t)
    return c


@triton.jit
def _prototype_tile(
    p_ptr, k, kmask, dcols, dmask, s_pk, s_pd, NORMALIZE: tl.constexpr, EPS: tl.constexpr, acc_t: tl.constexpr
):
    """A (BLOCK_K, BLOCK_D) tile of raw prototype rows and their inverse norms."""
    offs = k[:, None].to(tl.int64) * s_pk + dcols[None, :] * s_pd
    p = tl.load(p_ptr + offs, mask=kmask[:, None] & dmask[None, :], other=0.0)
    pf = p.to(acc_t)
    if NORMALIZE:
        rn = inverse_norm(tl.sum(pf * pf, axis=1), EPS)
    else:
        rn = tl.full((p.shape[0],), 1.0, acc_t)
    return p, rn


@triton.jit
def _embedding_block(e_ptr, v, b, row_ok, dcols, dmask, s_ev, s_eb, s_ed):
    """A (BLOCK_R, BLOCK_D) block of raw embedding rows (v, b)."""
    offs = v[:, None].to(tl.int64) * s_ev + b[:, None].to(tl.int64) * s_eb + dcols[None, :] * s_ed
    return tl.load(e_ptr + offs, mask=row_ok[:, None] & dmask[None, :], other=0.0)


@triton.jit
def _scores(e, p, rn_e, rn_p, PRECISION: tl.constexpr, acc_t: tl.constexpr):
    """(E P^T) scaled by both inverse norms in the epilogue: raw operands into the dot,
    so no normalized copy is rounded to the operand dtype."""
    acc = tl.zeros((e.shape[0], p.shape[0]), acc_t)
    acc = tl.dot(e, tl.trans(p), acc, input_precision=PRECISION)
    return acc * rn_e[:, None] * rn_p[None, :]


@triton.jit
def _project(d, x, rn, EPS: tl.constexpr):
    """The gradient of x / max(||x||, eps) from d = d loss / d x_hat, per row of a tile, in
    the accumulation type: rn (d - x <x, d> / ||x||^2), rn d where clamped (an fp64 tile
    here would double the epilogue's registers; prototype_scores' kernels, which have
    them, project in fp64)."""
    ss = tl.sum(x * x, axis=1)
    keep = tl.sqrt(ss) >= EPS
    c = tl.where(keep, tl.sum(x * d, axis=1) / tl.where(keep, ss, 1.0), 0.0)
    return rn[:, None] * (d - x * c[:, None])


@triton.jit
def _split(lse, inv_t64, acc_t: tl.constexpr):
    """L = T lse as two acc_t values, L_hi + L_lo: (x - L_hi) - L_lo is exact near the row
    max however large |lse| is (fp32 lse alone loses ~|lse| 6e-8 in the exponent)."""
    big_l = lse / inv_t64
    hi = big_l.to(acc_t)
    return hi, (big_l - hi.to(tl.float64)).to(acc_t)


@triton.jit
def _head_rows_kernel(
    e_ptr, p_ptr, codes_ptr, grad_e_ptr, rows_ptr, partial_ptr,
    VB, B, K, D, s_ev, s_eb, s_ed, s_pk, s_pd, s_ca, s_cb, s_ck, inv_t, inv_t_lo, coef,
    A: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr, EPS: tl.constexpr,
    F64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Rows r of E in this block: lse, R, rn_e and the loss partial; grad_E."""
    acc_t: tl.constexpr = tl.float64 if F64 else tl.float32
    inv_t64 = tl.cast(inv_t, tl.float64) + tl.cast(inv_t_lo, tl.float64)
    inv_t_acc = inv_t64.to(acc_t)
    pid = tl.program_id(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = r < VB
    v = r // B
    b = r % B
    dcols = tl.arange(0, BLOCK_D)
    dmask = dcols < D
    e = _embedding_block(e_ptr, v, b, row_ok, dcols, dmask, s_ev, s_eb, s_ed)
    ef = e.to(acc_t)
    if NORMALIZE:
        rn_e = inverse_norm(tl.sum(ef * ef, axis=1), EPS)
    else:
        rn_e = tl.full((BLOCK_R,), 1.0, acc_t)

    # Pass 1: online (max m, sum s of exp((x - m) / T)), R and gap = <C, m - x>.
    m = tl.full((BLOCK_R,), float("-inf"), acc_t)
    s = tl.zeros((BLOCK_R,), acc_t)
    gap = tl.zeros((BLOCK_R,), acc_t)
    big_r = tl.zeros((BLOCK_R,), acc_t)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        p, rn_p = _prototype_tile(p_ptr, k, kmask, dcols, dmask, s_pk, s_pd, NORMALIZE, EPS, acc_t)
        x = tl.where(kmask[None, :], _scores(e, p, rn_e, rn_p, PRECISION, acc_t), float("-inf"))
        c = _codes_tile(codes_ptr, b, v, row_ok, k, kmask, s_ca, s_cb, s_ck, A, BLOCK_R, BLOCK_K, acc_t)
        m_new = tl.maximum(m, tl.max(x, axis=1))
        grown = tl.where(m == float("-inf"), 0.0, (m_new - m) * big_r)
        dist = tl.where(kmask[None, :], m_new[:, None] - x, 0.0)
        s = s * tl.exp((m - m_new) * inv_t_acc) + tl.sum(
            tl.where(kmask[None, :], tl.exp(-dist * inv_t_acc), 0.0), axis=1
        )
        gap = gap + grown + tl.sum(c * dist, axis=1)
        big_r += tl.sum(c, axis=1)
        m = m_new
    log_s = tl.log(s.to(tl.float64))
    lse = m.to(tl.float64) * inv_t64 + log_s
    term = tl.where(row_ok, big_r.to(tl.float64) * log_s + gap.to(tl.float64) * inv_t64, 0.0)
    tl.store(partial_ptr + pid, tl.sum(term, axis=0))
    tl.store(rows_ptr + r, lse, mask=row_ok)
    tl.store(rows_ptr + VB + r, big_r.to(tl.float64), mask=row_ok)
    tl.store(rows_ptr + 2 * VB + r, rn_e.to(tl.float64), mask=row_ok)

    # Pass 2: grad_E_hat = G P_hat, G = R softmax(S / T) - C (scaled by coef at the end).
    l_hi, l_lo = _split(lse, inv_t64, acc_t)
    acc = tl.zeros((BLOCK_R, BLOCK_D), acc_t)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        p, rn_p = _prototype_tile(p_ptr, k, kmask, dcols, dmask, s_pk, s_pd, NORMALIZE, EPS, acc_t)
        x = _scores(e, p, rn_e, rn_p, PRECISION, acc_t)
        c = _codes_tile(codes_ptr, b, v, row_ok, k, kmask, s_ca, s_cb, s_ck, A, BLOCK_R, BLOCK_K, acc_t)
        prob = tl.exp(((x - l_hi[:, None]) - l_lo[:, None]) * inv_t_acc)
        g = tl.where(kmask[None, :], big_r[:, None] * prob - c, 0.0)
        # |p_hat| <= 1 and |G| <= max(R, A): both safe in fp16.
        p_hat = (p.to(acc_t) * rn_p[:, None]).to(p.dtype)
        acc = tl.dot(g.to(p.dtype), p_hat, acc, input_precision=PRECISION)
    d = acc * coef
    if NORMALIZE:
        d = _project(d, ef, rn_e, EPS)
    offs = r[:, None].to(tl.int64) * D + dcols[None, :]
    tl.store(grad_e_ptr + offs, d.to(grad_e_ptr.dtype.element_ty), mask=row_ok[:, None] & dmask[None, :])


@triton.jit
def _head_cols_kernel(
    e_ptr, p_ptr, codes_ptr, grad_p_ptr, rows_ptr, partial_ptr, loss_ptr,
    VB, B, K, D, s_ev, s_eb, s_ed, s_pk, s_pd, s_ca, s_cb, s_ck, inv_t, inv_t_lo, coef, norm,
    PARTIALS,
    A: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr, EPS: tl.constexpr,
    F64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Prototypes k of this tile: grad_P over every row block; program 0 also the loss."""
    acc_t: tl.constexpr = tl.float64 if F64 else tl.float32
    inv_t64 = tl.cast(inv_t, tl.float64) + tl.cast(inv_t_lo, tl.float64)
    inv_t_acc = inv_t64.to(acc_t)
    pid = tl.program_id(0)
    k = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = k < K
    dcols = tl.arange(0, BLOCK_D)
    dmask = dcols < D
    p, rn_p = _prototype_tile(p_ptr, k, kmask, dcols, dmask, s_pk, s_pd, NORMALIZE, EPS, acc_t)
    acc = tl.zeros((BLOCK_K, BLOCK_D), acc_t)
    for r0 in range(0, VB, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        row_ok = r < VB
        v = r // B
        b = r % B
        e = _embedding_block(e_ptr, v, b, row_ok, dcols, dmask, s_ev, s_eb, s_ed)
        lse = tl.load(rows_ptr + r, mask=row_ok, other=0.0)
        big_r = tl.load(rows_ptr + VB + r, mask=row_ok, other=0.0).to(acc_t)
        rn_e = tl.load(rows_ptr + 2 * VB + r, mask=row_ok, other=1.0).to(acc_t)
        x = _scores(e, p, rn_e, rn_p, PRECISION, acc_t)
        c = _codes_tile(codes_ptr, b, v, row_ok, k, kmask, s_ca, s_cb, s_ck, A, BLOCK_R, BLOCK_K, acc_t)
        l_hi, l_lo = _split(lse, inv_t64, acc_t)
        prob = tl.exp(((x - l_hi[:, None]) - l_lo[:, None]) * inv_t_acc)
        g = tl.where(row_ok[:, None] & kmask[None, :], big_r[:, None] * prob - c, 0.0)
        e_hat = (e.to(acc_t) * rn_e[:, None]).to(e.dtype)
        acc = tl.dot(tl.trans(g.to(e.dtype)), e_hat, acc, input_precision=PRECISION)
    d = acc * coef
    if NORMALIZE:
        d = _project(d, p.to(acc_t), rn_p, EPS)
    offs = k[:, None].to(tl.int64) * D + dcols[None, :]
    tl.store(grad_p_ptr + offs, d.to(grad_p_ptr.dtype.element_ty), mask=kmask[:, None] & dmask[None, :])
    if pid == 0:
        total = tl.zeros((BLOCK_P,), tl.float64)
        for i0 in range(0, PARTIALS, BLOCK_P):
            i = i0 + tl.arange(0, BLOCK_P)
            total += tl.load(partial_ptr + i, mask=i < PARTIALS, other=0.0)
        tl.store(loss_ptr, (tl.sum(total, axis=0) / norm).to(loss_ptr.dtype.element_ty))


@triton.jit
def _scale_rows(grad_loss_ptr, src_ptr, dst_ptr, block, n, BLOCK: tl.constexpr):
    offs = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(src_ptr + offs, mask=mask, other=0.0)
    g = tl.load(grad_loss_ptr).to(tl.float64 if x.dtype == tl.float64 else tl.float32)
    tl.store(dst_ptr + offs, (x.to(g.dtype) * g).to(x.dtype), mask=mask)


@triton.jit
def _scale_kernel(grad_loss_ptr, ge_ptr, gp_ptr, out_e_ptr, out_p_ptr, NE, NP, E_BLOCKS, BLOCK: tl.constexpr):
    """out = grad_loss * saved gradient, both gradients in one launch; grad_loss is read
    on the device."""
    pid = tl.program_id(0)
    if pid < E_BLOCKS:
        _scale_rows(grad_loss_ptr, ge_ptr, out_e_ptr, pid, NE, BLOCK)
    else:
        _scale_rows(grad_loss_ptr, gp_ptr, out_p_ptr, pid - E_BLOCKS, NP, BLOCK)


# --------------------------------------------------------------------------- launchers


def config(d: int, dtype: torch.dtype, device: torch.device, precision: str) -> dict:
    """Launch configuration of both kernels for D features. A program holds an operand
    block of (BLOCK_R or BLOCK_K, pow2(D)) raw values, its accumulator of the same size, a
    prototype (or embedding) tile of that size and (BLOCK_R, BLOCK_K) score, code and
    gradient tiles: 4096-element blocks (32 x 128, 16 x 256) at 8 warps and one pipeline
    stage keep all of it in registers, 2048-element ones for fp32 products in full
    precision (PRECISION "ieee": torch's default, TF32 off), whose dots hold more.
    Compiled for sm_90 (benchmarks/results/triton-resources-sm90.md): no spill at D = 128
    and 256, fp32 (TF32 or not) and bf16; the rows kernel uses up to all 255 registers;
    8192-element blocks, 4 warps, or 4096-element blocks of full-precision fp32 at D = 128
    (1 KiB of spills) spill. No GPU has timed them. Under the interpreter (CPU tensors)
    16-row blocks, so small test shapes still run several programs with ragged last blocks."""
    block_d = pow2(d, 16, 1 << 30)
    elements = 2048 if dtype == torch.float32 and precision == "ieee" else 4096
    block = 16 if device.type != "cuda" else pow2(elements // block_d, 16, 64)
    if dtype == torch.float64 and device.type == "cuda":
        block = 16
    return {"BLOCK_R": block, "BLOCK_K": block, "BLOCK_D": block_d, "num_warps": 8, "num_stages": 1}


def _common(embeddings, prototypes, codes, temperature, normalize):
    v, b, d = embeddings.shape
    a = codes.shape[0]
    inv_t = 1.0 / temperature
    inv_t_hi = host_fp32(inv_t)
    norm = loss_norm(v, a, b)
    args = (
        v * b, b, prototypes.shape[0], d,
        *embeddings.stride(), *prototypes.stride(), *codes.stride(),
        inv_t_hi, inv_t - inv_t_hi, 1.0 / (temperature * norm),
    )  # fmt: skip
    precision = dot_precision(embeddings)
    meta = {
        "A": a,
        "NORMALIZE": normalize,
        "PRECISION": precision,
        "EPS": EPS,
        "F64": accumulation_dtype(embeddings.dtype) == torch.float64,
        **config(d, embeddings.dtype, embeddings.device, precision),
    }
    return args, meta, norm


# ------------------------------------------------- one launcher per schema op (csrc/ops.cpp)


def prototype_cross_entropy(
    embeddings: torch.Tensor,
    prototypes: torch.Tensor,
    codes: torch.Tensor,
    temperature: float,
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    v, b, d = embeddings.shape
    k = prototypes.shape[0]
    device = embeddings.device
    args, meta, norm = _common(embeddings, prototypes, codes, temperature, normalize)
    row_programs = triton.cdiv(v * b, meta["BLOCK_R"])
    grad_e = torch.empty((v, b, d), dtype=embeddings.dtype, device=device)
    grad_p = torch.empty((k, d), dtype=prototypes.dtype, device=device)
    rows = torch.empty((3, v * b), dtype=torch.float64, device=device)  # lse, R, rn_e
    partials = torch.empty((row_programs,), dtype=torch.float64, device=device)
    loss = torch.empty((), dtype=accumulation_dtype(embeddings.dtype), device=device)
    wrap_triton(_head_rows_kernel)[(row_programs,)](
        embeddings, prototypes, codes, grad_e, rows, partials, *args, **meta
    )
    wrap_triton(_head_cols_kernel)[(triton.cdiv(k, meta["BLOCK_K"]),)](
        embeddings, prototypes, codes, grad_p, rows, partials, loss, *args, norm, row_programs,
        BLOCK_P=128, **meta,
    )  # fmt: skip
    return loss, grad_e, grad_p


def prototype_cross_entropy_backward(
    grad_loss: torch.Tensor, grad_embeddings: torch.Tensor, grad_prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    ge, gp = grad_embeddings.contiguous(), grad_prototypes.contiguous()
    out_e, out_p = torch.empty_like(ge), torch.empty_like(gp)
    block = 1024
    e_blocks = triton.cdiv(ge.numel(), block)
    grid = (e_blocks + triton.cdiv(gp.numel(), block),)
    wrap_triton(_scale_kernel)[grid](
        grad_loss, ge, gp, out_e, out_p, ge.numel(), gp.numel(), e_blocks, BLOCK=block
    )
    return out_e, out_p

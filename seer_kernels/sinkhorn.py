"""Sinkhorn-Knopp codes for SwAV, fused.

Order of this module: Triton kernels, launchers, registration (fake kernels of the C++
ops, the Triton op), public wrapper. The C++ kernels are csrc/cpu/sinkhorn.cpp and
csrc/cuda/sinkhorn.cu; the oracle is seer_kernels.reference.sinkhorn.

Algorithm (every backend, log domain, fp32 accumulation whatever the input dtype):
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
matters underflows; see csrc/cpu/sinkhorn.cpp). Codes carry no gradient: the op is not
differentiable and the public function detaches its input (SwAV computes codes under
no_grad), so backward through codes raises "does not require grad".

Non-finite input, the same on every backend: a NaN score makes every code NaN; +inf
gives NaN where inf - inf appears (never a finite wrong answer); `check_finite=True`
raises a ValueError instead (one device sync). Fused backends take fp32/bf16/fp16 and
return fp32; float64 runs on backend="reference" only.

Memory, CPU backend (measured at K = 65536 by tests/test_memory.py): besides the (B, K)
fp32 codes (whole 2 MiB pages from 4 MiB on), at most (2 C + 8 T + 5) Kp fp32 values, for
T threads, C = max(16, ceil(B / 256)) row chunks and Kp = K rounded up to the vector
width: per-chunk column statistics, an 8-row buffer per thread and a few K-vectors; the
chunk statistics and row buffers are freed before the codes are allocated (the last pass
needs (T + 3) Kp). O(K): nothing else of size B K, except a contiguous copy of strided
scores.
"""

from __future__ import annotations

import math

import torch

from seer_kernels import _backend, _checks, _distributed, reference

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: the "triton" backend is simply not available
    triton = None

# ----------------------------------------------------------------------------- Triton
# Bytes moved per pass, (B, K) scores of s bytes: colstats reads B*K*s and writes
# G*2*K fp32 partial statistics (G row groups, about two per SM); the merge reads those
# and writes K floats; codes reads B*K*s and writes B*K*4. A whole row tile (K <= 16384)
# stays in registers, so each pass reads the scores once; wider rows take a second,
# cache-resident read of the row tile.

if triton is not None:
    # The merge kernel's MODE: what it stores from each column's merged (shift, sum),
    # with lse = shift + log(sum). Same numbers as launch_merge's mode in
    # csrc/cuda/sinkhorn.cu. constexpr globals: a jitted kernel may read only those, and
    # branches on them at compile time.
    MERGE_STATS = tl.constexpr(0)  # out = the merged (2, K) statistics (the colstats op)
    MERGE_LSE = tl.constexpr(1)  # log_u = lse (iterations = 0, before _total_kernel)
    MERGE_FIRST = tl.constexpr(2)  # log_u = -lse - log K (pass 0)
    MERGE_UPDATE = tl.constexpr(3)  # log_u += log B - log K - lse (pass t >= 1)

    @triton.jit
    def _finite_or_zero(m):
        # The reference's m_safe: a column or row whose max is +-inf or NaN is shifted by 0.
        return tl.where(m - m == 0.0, m, 0.0)

    @triton.jit
    def _rescale(run_sum, run_max, shift):
        # sum exp(. - old shift) -> sum exp(. - shift). An empty sum (max -inf) stays 0:
        # exp(0 - shift) overflows once the new max is below -88, and 0 * inf is NaN.
        return tl.where(run_sum == 0.0, run_sum, run_sum * tl.exp(_finite_or_zero(run_max) - shift))

    @triton.jit
    def _load_z(scores, lu, rows, cols, row_end, K, stride_b, eps):
        # z = scores / eps + log_u on a [rows, cols] tile; -inf outside, so it adds nothing.
        mask = (rows < row_end)[:, None] & (cols < K)[None, :]
        ptrs = scores + rows[:, None].to(tl.int64) * stride_b + cols[None, :]
        x = tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32)
        # torch.compile passes Python floats as fp64 scalars, eager launches as fp32: the
        # reference divides fp32 scores by eps rounded to fp32, so both do that here.
        return tl.div_rn(x, tl.cast(eps, tl.float32)) + lu[None, :]

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
            new_max = tl.maximum(run_max, tl.max(z, axis=0))
            shift = _finite_or_zero(new_max)
            run_sum = _rescale(run_sum, run_max, shift)
            run_sum += tl.sum(tl.exp(z - shift[None, :]), axis=0)
            run_max = new_max
        out = partial + g * 2 * K + cols
        tl.store(out, _finite_or_zero(run_max), mask=cols < K)
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
            new_max = tl.maximum(run_max, tl.max(z, axis=1))
            shift = _finite_or_zero(new_max)
            run_sum = _rescale(run_sum, run_max, shift)
            run_sum += tl.sum(tl.exp(z - shift[:, None]), axis=1)
            run_max = new_max
        return _finite_or_zero(run_max), 1.0 / run_sum

    @triton.jit
    def _normalized_colstats_kernel(
        scores, log_u, partial, B, K, stride_b, rows_per_group, eps,
        BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr,
    ):  # fmt: skip
        # Pass t on one row group: column sums of softmax_k(z) (entries in [0, 1], so no
        # shift: see the module docstring); writes partial[g] = (0, sum).
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
        scale = tl.cast(scale, tl.float32)  # fp64 when torch.compile launches (see _load_z)
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
        log_b, log_k = tl.cast(log_b, tl.float32), tl.cast(log_k, tl.float32)  # fp64 under torch.compile
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < K
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        for g0 in range(0, groups, GROUP_BLOCK):
            ptrs, tile_mask = _group_tile(partial, g0, groups, cols, mask, K, GROUP_BLOCK)
            m = tl.maximum(m, tl.max(tl.load(ptrs, mask=tile_mask, other=float("-inf")), axis=0))
        shift = _finite_or_zero(m)
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
        shift = _finite_or_zero(tl.max(m, axis=0))
        s = tl.zeros([BLOCK], tl.float32)
        for k0 in range(0, K, BLOCK):
            cols = k0 + tl.arange(0, BLOCK)
            s += tl.exp(tl.load(log_u + cols, mask=cols < K, other=float("-inf")) - shift)
        value = -(shift + tl.log(tl.sum(s, axis=0)))
        for k0 in range(0, K, BLOCK):
            cols = k0 + tl.arange(0, BLOCK)
            tl.store(log_u + cols, tl.zeros([BLOCK], tl.float32) + value, mask=cols < K)


# --------------------------------------------------------------------------- launchers
# Widest row tile kept in registers whole (one read per pass); wider rows loop.
_MAX_ONE_TILE = 16384
_TILE_ELEMENTS = 4096


def _target_programs(device: torch.device) -> int:
    """About two programs per SM on a GPU; few under the interpreter (each program is
    run in Python there) but more than one, so the merges are exercised."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 3


def _row_tile(k: int, max_one_tile: int) -> tuple[int, int, bool]:
    """(BLOCK_B, BLOCK_K, ONE_TILE) for kernels that need whole rows."""
    one_tile = k <= max_one_tile
    block_k = (
        triton.next_power_of_2(k) if one_tile else min(_TILE_ELEMENTS, triton.next_power_of_2(max_one_tile))
    )
    block_b = max(1, min(64, _TILE_ELEMENTS // block_k))
    return block_b, block_k, one_tile


def _num_warps(block_elements: int) -> int:
    return max(4, min(16, block_elements // 1024))


def _rows_contiguous(scores: torch.Tensor) -> torch.Tensor:
    return scores if scores.stride(1) == 1 else scores.contiguous()


def _launch_colstats(
    scores: torch.Tensor, log_u: torch.Tensor, epsilon: float, normalize_rows: bool, max_one_tile: int
) -> tuple[torch.Tensor, int]:
    """Per-row-group column statistics: (G, 2, K) fp32 partials and G."""
    b, k = scores.shape
    programs = _target_programs(scores.device)
    if normalize_rows:
        block_b, block_k, one_tile = _row_tile(k, max_one_tile)
        per = triton.cdiv(triton.cdiv(b, min(programs, triton.cdiv(b, block_b))), block_b) * block_b
        groups = triton.cdiv(b, per)
        partial = torch.empty((groups, 2, k), dtype=torch.float32, device=scores.device)
        _backend.wrap_triton(_normalized_colstats_kernel)[(groups,)](
            scores, log_u, partial, b, k, scores.stride(0), per, epsilon,
            BLOCK_B=block_b, BLOCK_K=block_k, ONE_TILE=one_tile, num_warps=_num_warps(block_b * block_k),
        )  # fmt: skip
        return partial, groups
    block_b, block_k = 32, min(128, triton.next_power_of_2(k))
    col_tiles = triton.cdiv(k, block_k)
    want = max(1, min(triton.cdiv(b, block_b), triton.cdiv(programs, col_tiles)))
    per = triton.cdiv(triton.cdiv(b, want), block_b) * block_b
    groups = triton.cdiv(b, per)
    partial = torch.empty((groups, 2, k), dtype=torch.float32, device=scores.device)
    _backend.wrap_triton(_plain_colstats_kernel)[(groups, col_tiles)](
        scores, log_u, partial, b, k, scores.stride(0), per, epsilon, BLOCK_B=block_b, BLOCK_K=block_k
    )
    return partial, groups


def _launch_merge(partial, groups, log_u, mode, *, out=None, log_b=0.0, log_k=0.0) -> None:
    """One merge launch; `mode` is one of the MERGE_* constants (or its number)."""
    # 64 columns (256 B rows of the tile) x 32 groups per step: K / 64 programs (47 at
    # K = 3000; one 1024-wide program per 1024 columns left 3 programs walking all G
    # groups one by one, latency-bound on a 132-SM GPU).
    k = partial.shape[2]
    block = min(64, triton.next_power_of_2(k))
    group_block = min(32, triton.next_power_of_2(groups))
    target = log_u if out is None else out
    _backend.wrap_triton(_merge_kernel)[(triton.cdiv(k, block),)](
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
    _backend.wrap_triton(_codes_kernel)[(triton.cdiv(b, block_b),)](
        scores, log_u, codes, b, k, scores.stride(0), epsilon, scale,
        BLOCK_B=block_b, BLOCK_K=block_k, ONE_TILE=one_tile, NORMALIZE=normalize_rows,
        num_warps=_num_warps(block_b * block_k),
    )  # fmt: skip
    return codes


def _triton_pipeline(
    scores: torch.Tensor, epsilon: float, iterations: int, max_one_tile: int
) -> torch.Tensor:
    """The fused op on Triton: T + 1 colstats/merge launches and one codes launch, the
    log_u updates done by the merge kernel on the device (no host sync)."""
    scores = _rows_contiguous(scores)
    b, k = scores.shape
    log_b = math.log(b)
    log_k = math.log(k)
    log_u = torch.zeros(k, dtype=torch.float32, device=scores.device)
    partial, groups = _launch_colstats(scores, log_u, epsilon, False, max_one_tile)
    if iterations == 0:
        _launch_merge(partial, groups, log_u, MERGE_LSE)
        block = min(1024, triton.next_power_of_2(k))
        _backend.wrap_triton(_total_kernel)[(1,)](log_u, k, BLOCK=block)
        # B * exp(L - total): B outside the exp keeps the exponent's rounding small.
        return _launch_codes(scores, log_u, epsilon, False, max_one_tile, float(b))
    _launch_merge(partial, groups, log_u, MERGE_FIRST, log_k=log_k)
    for _ in range(iterations - 1):
        partial, groups = _launch_colstats(scores, log_u, epsilon, True, max_one_tile)
        _launch_merge(partial, groups, log_u, MERGE_UPDATE, log_b=log_b, log_k=log_k)
    return _launch_codes(scores, log_u, epsilon, True, max_one_tile)


def _triton_colstats_impl(scores, log_u, epsilon, normalize_rows, max_one_tile) -> torch.Tensor:
    scores = _rows_contiguous(scores)
    log_u = log_u.to(torch.float32).contiguous()
    partial, groups = _launch_colstats(scores, log_u, epsilon, normalize_rows, max_one_tile)
    out = torch.empty((2, scores.shape[1]), dtype=torch.float32, device=scores.device)
    _launch_merge(partial, groups, log_u, MERGE_STATS, out=out)
    return out


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


if triton is not None:
    # The Triton ops: torch.compile sees through triton_op into the kernels. Not
    # differentiable (codes carry no gradient), so no autograd is registered.

    @torch.library.triton_op("seer_kernels::sinkhorn_triton", mutates_args=())
    def _triton_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
        return _triton_pipeline(scores, epsilon, iterations, _MAX_ONE_TILE)

    @torch.library.triton_op("seer_kernels::sinkhorn_colstats_triton", mutates_args=())
    def _triton_colstats(
        scores: torch.Tensor, log_u: torch.Tensor, epsilon: float, normalize_rows: bool
    ) -> torch.Tensor:
        return _triton_colstats_impl(scores, log_u, epsilon, normalize_rows, _MAX_ONE_TILE)

    @torch.library.triton_op("seer_kernels::sinkhorn_codes_triton", mutates_args=())
    def _triton_codes(
        scores: torch.Tensor, log_u: torch.Tensor, epsilon: float, normalize_rows: bool
    ) -> torch.Tensor:
        log_u = log_u.to(torch.float32).contiguous()
        return _launch_codes(_rows_contiguous(scores), log_u, epsilon, normalize_rows, _MAX_ONE_TILE)


# ------------------------------------------------------------------------ public API

_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _distributed_sinkhorn(scores, epsilon, iterations, group, colstats, codes):
    """The same passes as the fused op, with each pass's K-vector of column statistics
    combined across ranks (one all_gather per half-iteration, no host sync)."""
    k = scores.shape[1]
    log_k = math.log(k)
    zeros = torch.zeros(k, dtype=torch.float32, device=scores.device)
    rows = _distributed.global_rows(scores.shape[0], scores.device, group).float()
    log_b = torch.log(rows)
    col = _distributed.combine_colstats(colstats(scores, zeros, epsilon, False), group)
    if iterations == 0:
        # B * exp(L - total), as the single-process kernels compute it.
        total = torch.logsumexp(col, dim=0)
        return codes(scores, (-total).expand(k).contiguous(), epsilon, False) * rows
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
    name = _backend.resolve(backend, scores.device, "sinkhorn")
    if backend is None and scores.dtype not in _FUSED_DTYPES:
        name = "reference"  # float64 (an oracle's dtype): no fused kernel takes it
    scores = scores.detach()
    if name == "reference":
        return reference.sinkhorn(scores, epsilon, iterations, process_group)
    if scores.dtype not in _FUSED_DTYPES:
        raise TypeError(
            f"scores must be float32, float16 or bfloat16 for backend {name!r} (float64 runs on "
            f"backend='reference'), got dtype {scores.dtype}"
        )
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

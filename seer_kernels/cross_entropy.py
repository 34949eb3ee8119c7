"""SwAV's multi-crop swapped-prediction softmax cross-entropy, fused.

Order of this module: Triton kernels, launchers, registration (fake kernels, autograd,
the Triton op), public wrapper. C++ kernels: csrc/cpu/swav_cross_entropy.cpp and
csrc/cuda/swav_cross_entropy.cu; oracle: seer_kernels.reference.swav_cross_entropy.

Algorithm (every backend). With lse_v[b] = logsumexp_k scores[v, b, k] / T and the
summed targets of crop v, C_v[b] = sum_{a < A, a != v} codes[a, b] and R_v[b] = sum_k
C_v[b, k] (the codes' row sums are not assumed to be 1):
    loss = sum_{v, b} (lse_v[b] R_v[b] - <C_v[b], scores[v, b]> / T) / (A (V - 1) B)
    grad scores[v, b] = grad_loss (R_v[b] softmax(scores[v, b] / T) - C_v[b]) / (T A (V - 1) B)
which is the reference's loop over (a, v != a) pairs regrouped per crop: one logsumexp per
(v, b) serves every a. Forward keeps only lse (V B values) for backward; backward writes
the gradient in one pass. Accumulation is fp32 (fp64 for fp64 scores); the gradient has
the dtype of scores; codes get no gradient.

Triton kernels: one program per sample b holds all V crops of that sample as a
(V, BLOCK_K) tile, so each code row is read from memory once per direction and serves
every crop (C_v is built in registers from the A code rows), and scores are read once
(online logsumexp over K blocks). Bytes: forward V B K e_s + A B K e_c + 8 V B + 8 B;
backward 2 V B K e_s + 2 A B K e_c + 8 V B (one extra pass over the codes for R_v, since
only lse is kept). FLOPs: ~ V B K (A + 5) each way plus one exp per score element.

Memory, CPU backend (measured at K = 65536 by tests/test_memory.py): forward, the V B
fp64 logsumexps it keeps for backward and B fp64 partial losses; backward, the (V, B, K)
gradient. Each direction also uses (A + 2) K accumulation-type values per thread (rows
converted from other dtypes: the A code rows, one score row, one gradient row; allocated
whatever the dtypes). Nothing else of size B K, except contiguous copies of strided inputs.
"""

from __future__ import annotations

import torch

from seer_kernels import _backend, _checks, reference

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: the cpu/cuda/reference backends still work
    triton = None

# ----------------------------------------------------------------------------- Triton

if triton is not None:

    @triton.jit
    def _targets(
        codes, b, v, k, kmask, A, B, K,
        VP: tl.constexpr, AP: tl.constexpr, BK: tl.constexpr, acc_t: tl.constexpr,
    ):  # fmt: skip
        """C_v at columns k for every crop v of the tile: the sum of the code rows a != v
        of sample b, added in increasing a (the order of the C++ kernels)."""
        acc = tl.zeros((VP, BK), dtype=acc_t)
        for a in tl.static_range(AP):
            row = tl.load(codes + (a * B + b) * K + k, mask=kmask & (a < A), other=0.0)
            acc += tl.where(v[:, None] != a, row.to(acc_t)[None, :], 0.0)
        return acc

    @triton.jit
    def _xent_fwd_kernel(
        scores, codes, lse_out, partial_out, V, A, B, K, inv_t, inv_t_lo,
        VP: tl.constexpr, AP: tl.constexpr, BK: tl.constexpr, F64: tl.constexpr,
    ):  # fmt: skip
        """Program b: lse of the V rows scores[:, b] (fp64) and the partial loss of sample b,
        sum_v R_v log(s_v) + <C_v, m_v - x> / T (the reference's form: no cancellation)."""
        acc_t: tl.constexpr = tl.float64 if F64 else tl.float32  # fp64 only for fp64 scores
        inv_t64 = tl.cast(inv_t, tl.float64) + tl.cast(inv_t_lo, tl.float64)
        inv_t_acc = inv_t64.to(acc_t)
        b = tl.program_id(0).to(tl.int64)
        v = tl.arange(0, VP)
        vmask = v < V
        base = (v[:, None] * B + b) * K
        m = tl.full((VP,), float("-inf"), acc_t)  # running max of the row
        s = tl.zeros((VP,), acc_t)  # sum exp((x - m) / T)
        d = tl.zeros((VP,), acc_t)  # <C_v, m - x> over the columns so far
        r = tl.zeros((VP,), acc_t)  # R_v over the columns so far
        for k0 in range(0, K, BK):
            k = k0 + tl.arange(0, BK)
            kmask = k < K
            mask = vmask[:, None] & kmask[None, :]
            x = tl.load(scores + base + k[None, :], mask=mask, other=float("-inf")).to(acc_t)
            c = _targets(codes, b, v, k, kmask, A, B, K, VP, AP, BK, acc_t)
            m_new = tl.maximum(m, tl.max(x, 1))
            # Padded crops stay at m = -inf: shift by 0 there and add nothing.
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            grown = tl.where(m == float("-inf"), 0.0, (m_new - m) * r)
            gap = tl.where(mask, shift[:, None] - x, 0.0)
            s = s * tl.exp((m - shift) * inv_t_acc) + tl.sum(tl.where(mask, tl.exp(-gap * inv_t_acc), 0.0), 1)
            d = d + grown + tl.sum(c * gap, 1)
            r += tl.sum(c, 1)
            m = m_new
        log_s = tl.log(s.to(tl.float64))
        tl.store(lse_out + v * B + b, m.to(tl.float64) * inv_t64 + log_s, mask=vmask)
        term = r.to(tl.float64) * log_s + d.to(tl.float64) * inv_t64
        tl.store(partial_out + b, tl.sum(tl.where(vmask, term, 0.0), 0))

    @triton.jit
    def _xent_bwd_kernel(
        grad_loss, scores, codes, lse, grad_out, V, A, B, K, inv_t, inv_t_lo, norm,
        VP: tl.constexpr, AP: tl.constexpr, BK: tl.constexpr, F64: tl.constexpr,
    ):  # fmt: skip
        """Program b: grad[:, b] = grad_loss / (T norm) * (R_v softmax(x / T) - C_v). The
        exponent is (x - L_hi - L_lo) / T with L = T lse split in two acc_t values, exact
        near the row max however large |lse| is (fp32 lse would lose ~|lse| 6e-8)."""
        acc_t: tl.constexpr = tl.float64 if F64 else tl.float32  # fp64 only for fp64 scores
        inv_t64 = tl.cast(inv_t, tl.float64) + tl.cast(inv_t_lo, tl.float64)
        inv_t_acc = inv_t64.to(acc_t)
        b = tl.program_id(0).to(tl.int64)
        v = tl.arange(0, VP)
        vmask = v < V
        base = (v[:, None] * B + b) * K
        r = tl.zeros((VP,), acc_t)  # R_v: a pass over the code rows (only lse is saved)
        for k0 in range(0, K, BK):
            k = k0 + tl.arange(0, BK)
            r += tl.sum(_targets(codes, b, v, k, k < K, A, B, K, VP, AP, BK, acc_t), 1)
        g = tl.load(grad_loss).to(acc_t) * (inv_t64 / norm).to(acc_t)
        big_l = tl.load(lse + v * B + b, mask=vmask, other=0.0) / inv_t64
        l_hi = big_l.to(acc_t)
        l_lo = (big_l - l_hi.to(tl.float64)).to(acc_t)
        for k0 in range(0, K, BK):
            k = k0 + tl.arange(0, BK)
            kmask = k < K
            mask = vmask[:, None] & kmask[None, :]
            # -inf outside the tile's valid part: p = 0 there, nothing overflows.
            x = tl.load(scores + base + k[None, :], mask=mask, other=float("-inf")).to(acc_t)
            c = _targets(codes, b, v, k, kmask, A, B, K, VP, AP, BK, acc_t)
            p = tl.exp(((x - l_hi[:, None]) - l_lo[:, None]) * inv_t_acc)
            out = (r[:, None] * p - c) * g
            tl.store(grad_out + base + k[None, :], out.to(grad_out.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launchers


def _loss_dtype(scores: torch.Tensor) -> torch.dtype:
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


def _norm(v: int, a: int, b: int) -> float:
    """The loss's normalization A (V - 1) B: mean over a, over v != a, over b."""
    return float(a * (v - 1) * b)


def _meta(scores: torch.Tensor, a: int, temperature: float) -> dict:
    """Kernel constants: all crops of a sample in one (VP, BK) tile of ~4k elements; 1/T
    as an fp32 value plus its fp32 remainder (Triton passes Python floats as fp32, the
    kernels rebuild 1/T in fp64 where it scales lse)."""
    v, _, k = scores.shape
    vp = triton.next_power_of_2(v)
    bk = min(triton.next_power_of_2(k), max(16, 4096 // vp))
    inv_t = 1.0 / temperature
    inv_t_hi = float(torch.tensor(inv_t, dtype=torch.float32))
    return {
        "inv_t": inv_t_hi, "inv_t_lo": inv_t - inv_t_hi,
        "VP": vp, "AP": a, "BK": bk, "F64": scores.dtype == torch.float64, "num_warps": 8,
    }  # fmt: skip


def _launch_forward(scores, codes, temperature):
    v, b, k = scores.shape
    a = codes.shape[0]
    lse = torch.empty((v, b), dtype=torch.float64, device=scores.device)
    partial = torch.empty((b,), dtype=torch.float64, device=scores.device)
    _backend.wrap_triton(_xent_fwd_kernel)[(b,)](
        scores, codes, lse, partial, v, a, b, k, **_meta(scores, a, temperature)
    )
    return (partial.sum() / _norm(v, a, b)).to(_loss_dtype(scores)), lse


def _launch_backward(grad_loss, scores, codes, lse, temperature):
    v, b, k = scores.shape
    a = codes.shape[0]
    grad = torch.empty_like(scores)
    _backend.wrap_triton(_xent_bwd_kernel)[(b,)](
        grad_loss, scores, codes, lse, grad, v, a, b, k, norm=a * (v - 1) * b, **_meta(scores, a, temperature)
    )
    return grad


# ------------------------------------------------------------------------ registration


def _setup_context(ctx, inputs, output) -> None:
    scores, codes, temperature = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(scores, codes, output[1])
    ctx.temperature = temperature


def _fake_forward(scores, codes, temperature):
    return scores.new_empty((), dtype=_loss_dtype(scores)), scores.new_empty(
        scores.shape[:2], dtype=torch.float64
    )


def _fake_backward(grad_loss, scores, codes, lse, temperature):
    return torch.empty_like(scores, memory_format=torch.contiguous_format)


def _autograd(backward_op):
    """The backward of a forward op returning (loss, lse): one call of `backward_op`."""

    def backward(ctx, grad_loss, _grad_lse):
        scores, codes, lse = ctx.saved_tensors
        return backward_op(grad_loss, scores, codes, lse, ctx.temperature), None, None

    return backward


def _register_cpp() -> None:
    torch.library.register_fake("seer_kernels::swav_cross_entropy", _fake_forward)
    torch.library.register_fake("seer_kernels::swav_cross_entropy_backward", _fake_backward)
    torch.library.register_autograd(
        "seer_kernels::swav_cross_entropy",
        _autograd(torch.ops.seer_kernels.swav_cross_entropy_backward),
        setup_context=_setup_context,
    )


def _triton_forward(
    scores: torch.Tensor, codes: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_forward(scores.contiguous(), codes.contiguous(), temperature)


def _triton_backward(
    grad_loss: torch.Tensor, scores: torch.Tensor, codes: torch.Tensor, lse: torch.Tensor, temperature: float
) -> torch.Tensor:
    return _launch_backward(
        grad_loss.contiguous(), scores.contiguous(), codes.contiguous(), lse.contiguous(), temperature
    )


def _register_triton() -> None:
    """seer_kernels::swav_cross_entropy_triton and its backward op. With compiled Triton
    they are triton_ops (torch.compile traces the kernels into its graph); under
    TRITON_INTERPRET=1 the kernels are Python functions that wrap_triton cannot trace, so
    they become opaque custom ops with explicit fake kernels (torch.compile still works)."""
    if _backend.triton_interpreted():
        forward = torch.library.custom_op("seer_kernels::swav_cross_entropy_triton", mutates_args=())(
            _triton_forward
        )
        backward = torch.library.custom_op(
            "seer_kernels::swav_cross_entropy_backward_triton", mutates_args=()
        )(_triton_backward)
        forward.register_fake(_fake_forward)
        backward.register_fake(_fake_backward)
    else:
        forward = torch.library.triton_op("seer_kernels::swav_cross_entropy_triton", mutates_args=())(
            _triton_forward
        )
        backward = torch.library.triton_op(
            "seer_kernels::swav_cross_entropy_backward_triton", mutates_args=()
        )(_triton_backward)
    forward.register_autograd(
        _autograd(torch.ops.seer_kernels.swav_cross_entropy_backward_triton), setup_context=_setup_context
    )


if _backend.extension() is not None:
    _register_cpp()
if triton is not None:
    _register_triton()


# ------------------------------------------------------------------------ public API


def swav_cross_entropy(
    scores: torch.Tensor,
    codes: torch.Tensor,
    temperature: float = 0.1,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Scalar SwAV loss of crop `scores` (V, B, K) against assignment `codes` (A, B, K).

    mean over a < A of 1/(V-1) * sum_{v != a} mean_b CE(codes[a, b], softmax(scores[v, b] / T)).
    Differentiable in scores; codes carry no gradient.

    Args:
        scores: (V, B, K) prototype scores of V >= 2 crops, fp32/fp16/bf16 (fp64 runs in
            fp64 on the cpu and triton backends).
        codes: (A, B, K) targets of the first A <= V crops (Sinkhorn codes), any float
            dtype; rows need not sum to 1.
        temperature: softmax temperature T > 0 (SwAV 0.1).
        backend: "reference", "cpu", "cuda", "triton" or None (fastest available).
    Returns: the loss, a 0-dim float32 tensor (float64 for float64 scores).
    """
    temperature = _checks.swav_cross_entropy_args(scores, codes, temperature)
    name = _backend.resolve(backend, scores.device, "swav_cross_entropy")
    codes = codes.detach()
    if name == "reference":
        return reference.swav_cross_entropy(scores, codes, temperature)
    if name == "triton":
        return torch.ops.seer_kernels.swav_cross_entropy_triton(scores, codes, temperature)[0]
    return torch.ops.seer_kernels.swav_cross_entropy(scores, codes, temperature)[0]

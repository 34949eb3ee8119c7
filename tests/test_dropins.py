"""Every drop-in against a plain implementation of the original it replaces.

The originals (lightly's `sinkhorn` / `SwaVLoss` / `SwaVPrototypes`, solo-learn's
`swav_loss_func` / `SinkhornKnopp`, the SwAV repository's `distributed_sinkhorn`) are
written below from their documented semantics as plain loops in the input's dtype, so
this file needs neither library installed. Each test feeds the same input to ours and to
the plain version (same dtype, and float64 as the oracle) over the call shapes those
libraries use (two crops, multi-crop with fewer assignments than crops, with and
without a queue), fp32 and bf16, and checks values and gradients with the tolerance
rule, or that ours raises where the original raises. Each deliberate difference listed
in docs/swav.md names the test that shows it (test_docs_name_existing_tests keeps those
names honest). When lightly is installed,
test_plain_lightly_matches_lightly checks the plain versions against it.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from tolerance import FLOOR, assert_close_rule

import seer_kernels
from seer_kernels import _backend
from seer_kernels.integrations import SoloSinkhornKnopp, lightly_sinkhorn, solo_swav_loss_func
from seer_kernels.swav import SwAVLoss, SwAVPrototypes

DTYPES = [torch.float32, torch.bfloat16]
B, K = 13, 37  # odd sizes


# ------------------------------------------------------------------------ the originals, plain


def plain_sinkhorn(out, iterations, epsilon, *, scale_rows=None, reduce=None, divide_by_k=True):
    """Sinkhorn-Knopp as lightly / solo-learn / SwAV write it, in the input's dtype:
    Q = exp(out / eps)^T over its total, then `iterations` rounds of (prototype rows to
    1/K, sample columns to 1/B), codes = B Q^T. `reduce` all-reduces the total and the
    row sums across ranks; B is `scale_rows` (rows x world_size) when given.
    lightly skips the 1/K of the row step (the column step cancels it)."""
    reduce = reduce or (lambda t: t)
    q = torch.exp(out.detach() / epsilon).t()
    k, b = q.shape
    b = b if scale_rows is None else scale_rows
    q = q / reduce(q.sum())
    for _ in range(iterations):
        q = q / reduce(q.sum(dim=1, keepdim=True))
        if divide_by_k:
            q = q / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def pair_ce(pred, code, temperature):
    """mean over samples of -sum_k code log softmax(pred / T): one (code, prediction) pair."""
    return -(code * torch.log_softmax(pred / temperature, dim=1)).sum(dim=1).mean()


def plain_solo_loss(preds, assignments, temperature):
    """solo-learn's swav_loss_func: assignment i predicts every prediction v != i; the
    plain mean of the per-pair losses (assignment i belongs to prediction i)."""
    losses = [
        pair_ce(preds[v], a, temperature)
        for i, a in enumerate(assignments)
        for v in range(len(preds))
        if v != i
    ]
    return sum(losses) / len(losses)


def plain_lightly_loss(high, low, queue, temperature, iterations, epsilon, reduce=None):
    """lightly's SwaVLoss: codes of each high-resolution crop i (its queue rows appended,
    their codes dropped) predict every other crop; per i divided by V - 1, mean over i."""
    n_crops = len(high) + len(low)
    total = high[0].new_zeros(1)
    for i in range(len(high)):
        rows = high[i].detach()
        if queue is not None:
            rows = torch.cat((rows, queue[i].detach()))
        world = dist.get_world_size() if reduce is not None else 1
        q = plain_sinkhorn(rows, iterations, epsilon, scale_rows=rows.shape[0] * world, reduce=reduce)
        q = q[: high[i].shape[0]]
        others = [high[v] for v in range(len(high)) if v != i] + list(low)
        subloss = sum((pair_ce(z, q, temperature) for z in others), high[i].new_zeros(1))
        total = total + subloss / (n_crops - 1)  # tensor / 0: NaN for a single crop
    return total / len(high)


# ------------------------------------------------------------------------ helpers


def runnable_backends() -> list[str]:
    """Backends whose ops run here (a built backend whose kernels are not merged yet
    raises NotImplementedError and is left out). The shapes here are small enough for
    the Triton interpreter."""
    out = []
    for name in seer_kernels.available_backends("cpu"):
        try:
            s = torch.randn(2, 4, 3, requires_grad=True)
            seer_kernels.swav_cross_entropy(s, torch.rand(1, 4, 3), 0.1, backend=name).backward()
            seer_kernels.sinkhorn(torch.randn(4, 3), epsilon=0.05, iterations=1, backend=name)
            seer_kernels.prototype_scores(torch.randn(4, 5), torch.randn(3, 5), backend=name)
        except (NotImplementedError, NameError):
            continue
        out.append(name)
    return out


RUNNABLE = runnable_backends()


@pytest.fixture(params=RUNNABLE)
def backend(request, monkeypatch):
    """The drop-ins take no backend argument (the originals have none): pick it through
    SEER_KERNELS_BACKEND, as a user would."""
    monkeypatch.setenv("SEER_KERNELS_BACKEND", request.param)
    return request.param


def cosine_scores(n: int, k: int, d: int = 16, *, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(n, d, generator=g), dim=1)
        @ F.normalize(torch.randn(k, d, generator=g), dim=1).t()
    )


def leaves(n: int, dtype, *, seed: int = 0, b: int = B, k: int = K) -> list[torch.Tensor]:
    """n crops of (b, k) cosine scores rounded to `dtype`: (ours, plain same dtype, plain float64)."""
    base = cosine_scores(n * b, k, seed=seed).to(dtype).split(b)
    return [
        [t.detach().clone().to(cast).requires_grad_() for t in base] for cast in (dtype, dtype, torch.float64)
    ]


def check(ours, same, oracle, dtype, what):
    assert_close_rule(ours, same, oracle, dtype, what=what)


def grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """d out / d inputs; zeros for an input the loss does not use (the assignment crop of
    a single-assignment call is predicted by no other crop)."""
    got = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(got, inputs, strict=True)]


def check_grads(ours_in, same_in, oracle_in, ours, same, oracle, dtype, what):
    """Gradients are O(1 / (B T V)): the floor is relative to the oracle's size."""
    triples = zip(grads(ours, ours_in), grads(same, same_in), grads(oracle, oracle_in), strict=True)
    for i, (g, s, o) in enumerate(triples):
        assert g.dtype == ours_in[i].dtype
        floor = FLOOR[dtype] * max(o.abs().max().item(), 1e-30)
        assert_close_rule(g, s, o, dtype, floor=floor, what=f"{what} grad {i}")


def codes_of(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Assignments as solo-learn's get_assignments makes them (per crop, in its dtype)."""
    return [plain_sinkhorn(s.double(), 3, 0.05).to(s.dtype) for s in scores]


# ------------------------------------------------------------------------ solo-learn swav_loss_func


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("n_preds", "n_assign"),
    [(2, 2), (2, 1), (3, 1), (4, 4), (5, 3), (6, 2), (8, 2)],
    ids=lambda x: str(x),
)
def test_solo_loss_matches(backend, dtype, n_preds, n_assign):
    """Any 1 <= A <= V: solo-learn's two-crop call (A = V = 2) and its multi-crop call
    (assignments of the large crops only: 6 or 8 predictions and 2 assignments)."""
    ours_in, same_in, oracle_in = leaves(n_preds, dtype, seed=n_preds * 10 + n_assign)
    codes = codes_of(same_in[:n_assign])
    ours = solo_swav_loss_func(ours_in, codes, 0.1)
    same = plain_solo_loss(same_in, codes, 0.1)
    oracle = plain_solo_loss(oracle_in, [c.double() for c in codes], 0.1)
    assert ours.shape == ()
    check(ours, same, oracle, dtype, "solo loss")
    check_grads(ours_in, same_in, oracle_in, ours, same, oracle, dtype, "solo loss")


def test_solo_loss_stacked_tensors_and_temperature(backend):
    """solo-learn's own tests pass preds as one (V, B, K) tensor; temperature positional."""
    ours_in, same_in, oracle_in = leaves(3, torch.float32, seed=4)
    stacked = torch.stack(ours_in)
    codes = torch.stack(codes_of(same_in[:2]))
    ours = solo_swav_loss_func(stacked, codes, 0.25)
    check(
        ours,
        plain_solo_loss(same_in, codes, 0.25),
        plain_solo_loss(oracle_in, codes.double(), 0.25),
        torch.float32,
        "",
    )


@pytest.mark.parametrize(("n_preds", "n_assign"), [(1, 1), (2, 0), (2, 3)])
def test_solo_loss_raises_where_solo_learn_raises(backend, n_preds, n_assign):
    """solo-learn: V = 1 or A = 0 divide by an empty pair count (ZeroDivisionError), A > V
    indexes past the predictions (IndexError). Ours: ValueError naming the argument."""
    preds = [torch.randn(B, K) for _ in range(n_preds)]
    assignments = [torch.rand(B, K) for _ in range(n_assign)]
    with pytest.raises((ZeroDivisionError, IndexError)):
        plain_solo_loss_strict(preds, assignments)
    with pytest.raises(ValueError, match="preds|assignments"):
        solo_swav_loss_func(preds, assignments, 0.1)


def plain_solo_loss_strict(preds, assignments):
    """plain_solo_loss with the original's indexing: prediction v of the range of
    predictions with index i removed, which fails for i past the end."""
    losses = []
    for i, a in enumerate(assignments):
        others = list(range(len(preds)))
        del others[i]  # IndexError for i >= V, like the original's np.delete
        losses += [pair_ce(preds[v], a, 0.1) for v in others]
    return sum(losses) / len(losses)


# ------------------------------------------------------------------------ solo-learn SinkhornKnopp


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("num_iters", [0, 1, 3])
@pytest.mark.parametrize("epsilon", [0.05, 0.03])
@pytest.mark.parametrize("world_size", [1, 2])
def test_solo_sinkhorn_knopp_matches(backend, dtype, num_iters, epsilon, world_size):
    """Single process with any world_size (solo-learn's B = rows x world_size enters the
    codes only when num_iters = 0); batch plus queue rows, as its get_assignments."""
    scores = cosine_scores(B + 24, K, seed=num_iters).to(dtype)
    rows = scores.shape[0] * world_size
    ours = SoloSinkhornKnopp(num_iters, epsilon, world_size)(scores)
    same = plain_sinkhorn(scores, num_iters, epsilon, scale_rows=rows)
    oracle = plain_sinkhorn(scores.double(), num_iters, epsilon, scale_rows=rows)
    assert ours.dtype == dtype and ours.shape == scores.shape
    check(ours, same, oracle, dtype, "SinkhornKnopp")


def test_solo_sinkhorn_knopp_defaults_and_attributes(backend):
    sk = SoloSinkhornKnopp()
    assert (sk.num_iters, sk.epsilon, sk.world_size) == (3, 0.05, 1)
    scores = cosine_scores(B, K, seed=1)
    sk.world_size = 4  # solo-learn's on_train_start builds it with the trainer's world size
    sk.num_iters = 0
    expected = plain_sinkhorn(scores.double(), 0, 0.05, scale_rows=4 * B)
    check(
        sk(scores), plain_sinkhorn(scores, 0, 0.05, scale_rows=4 * B), expected, torch.float32, "attributes"
    )


# ------------------------------------------------------------------------ lightly sinkhorn / SwaVLoss


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_lightly_sinkhorn_matches(backend, dtype, iterations):
    scores = cosine_scores(B, K, seed=iterations + 20).to(dtype)
    ours = lightly_sinkhorn(scores, iterations, 0.04)
    assert ours.dtype == dtype
    same = plain_sinkhorn(scores, iterations, 0.04, divide_by_k=False)
    oracle = plain_sinkhorn(scores.double(), iterations, 0.04, divide_by_k=False)
    check(ours, same, oracle, dtype, "lightly sinkhorn")
    # gather_distributed without an initialized group: lightly runs single-process.
    check(lightly_sinkhorn(scores, iterations, 0.04, True), same, oracle, dtype, "uninitialized gather")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("n_high", "n_low", "queue"),
    [(2, 0, False), (2, 0, True), (2, 4, False), (2, 6, True), (3, 2, True), (1, 3, False), (1, 1, True)],
    ids=lambda x: str(x),
)
@pytest.mark.parametrize("iterations", [0, 3])
def test_lightly_swav_loss_matches(backend, dtype, n_high, n_low, queue, iterations):
    """High/low-resolution lists, with and without queue_outputs, 0 and 3 rounds."""
    ours_in, same_in, oracle_in = leaves(n_high + n_low, dtype, seed=n_high * 7 + n_low)
    q = [cosine_scores(20 + 3 * i, K, seed=40 + i).to(dtype) for i in range(n_high)] if queue else None
    q64 = None if q is None else [t.double() for t in q]
    kwargs = {"temperature": 0.1, "iterations": iterations, "epsilon": 0.05}
    ours = SwAVLoss(0.1, iterations, 0.05)(ours_in[:n_high], ours_in[n_high:], q)
    same = plain_lightly_loss(same_in[:n_high], same_in[n_high:], q, **kwargs)
    oracle = plain_lightly_loss(oracle_in[:n_high], oracle_in[n_high:], q64, **kwargs)
    assert ours.shape == same.shape == (1,)
    check(ours, same, oracle, dtype, "SwaVLoss")
    check_grads(ours_in, same_in, oracle_in, ours, same, oracle, dtype, "SwaVLoss")


def test_lightly_swav_loss_tensor_inputs_and_extra_queue(backend):
    """lightly indexes its arguments, so stacked (V, B, K) / (A, Q, K) tensors work, and
    queue_outputs[i] is read for each high-resolution crop only: extra entries are unused."""
    ours_in, same_in, oracle_in = leaves(4, torch.float32, seed=9)
    queue = torch.stack([cosine_scores(16, K, seed=50 + i) for i in range(3)])  # 3 for 2 crops
    high, low = torch.stack(ours_in[:2]), torch.stack(ours_in[2:])
    ours = SwAVLoss(0.2, 2, 0.06)(high, low, queue)
    args = (0.2, 2, 0.06)
    same = plain_lightly_loss(same_in[:2], same_in[2:], queue, *args)
    oracle = plain_lightly_loss(oracle_in[:2], oracle_in[2:], queue.double(), *args)
    check(ours, same, oracle, torch.float32, "tensor inputs")
    check_grads(ours_in, same_in, oracle_in, ours, same, oracle, torch.float32, "tensor inputs")
    ours_list = SwAVLoss(0.2, 2, 0.06)(ours_in[:2], ours_in[2:], list(queue))
    check(ours_list, same, oracle, torch.float32, "extra queue list")


@pytest.mark.parametrize(
    ("high", "low", "queue"),
    [
        ([], [torch.randn(4, 5)], None),  # lightly: high_resolution_outputs[0] -> IndexError
        ([torch.randn(4, 5)] * 2, [], [torch.randn(8, 5)]),  # queue_outputs[1] -> IndexError
        ([torch.randn(4, 5), torch.randn(3, 5)], [], None),  # codes (3, 5) * (4, 5): RuntimeError
        ([torch.randn(4, 5)], [torch.randn(4, 6)], None),  # K mismatch: RuntimeError
    ],
)
def test_lightly_swav_loss_raises_where_lightly_raises(backend, high, low, queue):
    with pytest.raises((IndexError, RuntimeError)):
        plain_lightly_loss(high, low, queue, 0.1, 3, 0.05)
    with pytest.raises(ValueError):
        SwAVLoss()(high, low, queue)


# ------------------------------------------------------------------------ lightly SwaVPrototypes


def skip_interpreted_bf16_scores(backend: str, dtype: torch.dtype) -> None:
    """The Triton interpreter has no bf16 matmul (its prototype scores are garbage; the
    compiled kernels are checked on a GPU by tests/test_prototype_scores.py)."""
    if backend == "triton" and dtype == torch.bfloat16 and _backend.triton_interpreted():
        pytest.skip("the Triton interpreter has no bf16 prototype scores")


def plain_prototypes(x, weights):
    """lightly's heads: one nn.Linear per size, here with the bias at zero (ours has none)."""
    return [x @ w.t() for w in weights]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("sizes", [K, [K, 11, 5]], ids=["one_head", "three_heads"])
@pytest.mark.parametrize("x_shape", [(B, 16), (3, B, 16), (16,)], ids=["2d", "3d", "1d"])
def test_lightly_prototypes_match(backend, dtype, sizes, x_shape):
    """cosine=False is lightly's linear layer with a zero bias, for any (..., D) input
    (nn.Linear takes one; lightly's docs feed normalized features): scores and the
    gradients of x and of every head's weight."""
    skip_interpreted_bf16_scores(backend, dtype)
    torch.manual_seed(0)
    ours = SwAVPrototypes(16, sizes, cosine=False).to(dtype)
    x = F.normalize(torch.randn(*x_shape), dim=-1).to(dtype)
    heads = [h.weight for h in ours.heads]
    same_in = [x.clone().requires_grad_()] + [w.detach().clone().requires_grad_() for w in heads]
    oracle_in = [t.detach().double().requires_grad_() for t in same_in]
    ours_in = [x.clone().requires_grad_(), *heads]
    out = ours(ours_in[0])
    assert isinstance(out, torch.Tensor) == isinstance(sizes, int)
    out = [out] if isinstance(sizes, int) else out
    same = plain_prototypes(same_in[0], same_in[1:])
    oracle = plain_prototypes(oracle_in[0], oracle_in[1:])
    for o, s, r in zip(out, same, oracle, strict=True):
        assert o.shape == s.shape and o.dtype == dtype
        check(o, s, r, dtype, "prototypes")
    # A loss that weighs every score differently, so the gradients are not column sums.
    weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i)) for i, o in enumerate(oracle)]
    total = [
        sum((o * w.to(o.dtype)).sum() for o, w in zip(group, weights, strict=True))
        for group in (out, same, oracle)
    ]
    check_grads(ours_in, same_in, oracle_in, *total, dtype, "prototypes")


@pytest.mark.parametrize("n_frozen", [0, 3])
def test_lightly_prototypes_freezing_and_step(backend, n_frozen):
    """lightly: with n_steps_frozen_prototypes > 0 forward needs `step` (ValueError
    without), the prototypes get no gradient while step < n, and the input always does;
    with 0, `step` is optional and ignored."""
    ours = SwAVPrototypes(16, [K, 7], n_steps_frozen_prototypes=n_frozen)
    x = F.normalize(torch.randn(B, 16), dim=1).requires_grad_()
    if n_frozen:
        with pytest.raises(ValueError, match="step"):
            ours(x)
    else:
        assert all(o.shape[0] == B for o in ours(x))
    for step in range(5):
        ours.zero_grad(set_to_none=True)
        x.grad = None
        sum(o.sum() for o in ours(x, step)).backward()
        frozen = step < n_frozen
        assert all((h.weight.grad is None) == frozen for h in ours.heads), step
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_lightly_prototypes_normalize(backend):
    ours = SwAVPrototypes(16, [K, 5])
    ours.normalize()
    for h in ours.heads:
        torch.testing.assert_close(h.weight.norm(dim=1), torch.ones(h.weight.shape[0]))


# ------------------------------------------------------------------------ the SwAV repository's form


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("iterations", [0, 3, 10])
def test_swav_repo_distributed_sinkhorn_single_process(backend, dtype, iterations):
    """SwAV's `distributed_sinkhorn(out)` with args.epsilon, args.sinkhorn_iterations and
    world_size 1 is seer_kernels.sinkhorn(out, epsilon=epsilon, iterations=iterations) (float32 codes)."""
    scores = cosine_scores(B + 30, K, seed=iterations).to(dtype)
    ours = seer_kernels.sinkhorn(scores, epsilon=0.03, iterations=iterations)
    assert ours.dtype == torch.float32
    same = plain_sinkhorn(scores, iterations, 0.03)
    check(ours, same, plain_sinkhorn(scores.double(), iterations, 0.03), dtype, "SwAV sinkhorn")


# ------------------------------------------------------------------------ deliberate differences


def test_difference_loss_dtype(backend):
    """docs/swav.md: the losses are float32 for bf16 scores (the originals: bf16)."""
    ours_in, same_in, _ = leaves(3, torch.bfloat16, seed=3)
    codes = codes_of(same_in[:1])
    assert plain_solo_loss(same_in, codes, 0.1).dtype == torch.bfloat16
    assert solo_swav_loss_func(ours_in, codes, 0.1).dtype == torch.float32
    assert plain_lightly_loss(same_in[:1], same_in[1:], None, 0.1, 3, 0.05).dtype == torch.bfloat16
    assert SwAVLoss()(ours_in[:1], ours_in[1:]).dtype == torch.float32


def test_difference_single_crop_raises(backend):
    """docs/swav.md: one crop in all raises ValueError; lightly returns NaN (0 / 0)."""
    x = cosine_scores(B, K).requires_grad_()
    assert plain_lightly_loss([x], [], None, 0.1, 3, 0.05).isnan().all()
    with pytest.raises(ValueError, match="two crops"):
        SwAVLoss()([x], [])


def test_difference_no_overflow(backend):
    """docs/swav.md: the Sinkhorn works in log space, so large scores / eps do not
    overflow; the originals' exp(out / eps) gives inf and NaN codes."""
    scores = cosine_scores(B, K) * 10  # 200 / eps: exp overflows float32
    assert plain_sinkhorn(scores, 3, 0.05).isnan().any()
    for codes in (SoloSinkhornKnopp()(scores), lightly_sinkhorn(scores), seer_kernels.sinkhorn(scores)):
        assert torch.isfinite(codes).all()
        torch.testing.assert_close(
            codes.double(), plain_sinkhorn(scores.double(), 3, 0.05), rtol=1e-4, atol=1e-6
        )


def test_difference_assignments_get_no_gradient(backend):
    """docs/swav.md: assignments are targets only; solo-learn computes them under no_grad,
    so its gradient never reaches them either in its own methods."""
    preds = [t.requires_grad_() for t in cosine_scores(3 * B, K).split(B)]
    codes = [c.requires_grad_() for c in codes_of([p.detach() for p in preds[:2]])]
    loss = solo_swav_loss_func(preds, codes, 0.1)
    got = torch.autograd.grad(loss, preds + codes, allow_unused=True)
    assert all(g is not None for g in got[:3]) and all(g is None for g in got[3:])


def test_difference_prototypes_cast_weights(backend):
    """docs/swav.md: bf16 embeddings with float32 prototypes score in bf16 (lightly's
    nn.Linear raises on the dtype mismatch outside autocast)."""
    skip_interpreted_bf16_scores(backend, torch.bfloat16)
    ours = SwAVPrototypes(16, K, cosine=False)
    x = F.normalize(torch.randn(B, 16), dim=1).to(torch.bfloat16)
    with pytest.raises(RuntimeError):
        F.linear(x, ours.heads[0].weight)
    w = ours.heads[0].weight.detach()
    out = ours(x)
    assert out.dtype == torch.bfloat16
    check(
        out, x @ w.to(torch.bfloat16).t(), x.double() @ w.to(torch.bfloat16).double().t(), torch.bfloat16, ""
    )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SwAVLoss(temperature=0.0)(*[[t] for t in torch.randn(2, B, K)]), "temperature"),
        (lambda: SwAVLoss(sinkhorn_epsilon=-1.0)(*[[t] for t in torch.randn(2, B, K)]), "epsilon"),
        (lambda: SwAVLoss(sinkhorn_iterations=-1)(*[[t] for t in torch.randn(2, B, K)]), "iterations"),
        (lambda: SoloSinkhornKnopp(-2)(torch.randn(B, K)), "iterations"),
        (lambda: solo_swav_loss_func(list(torch.randn(2, B, K)), [torch.rand(B, K)], 0.0), "temperature"),
    ],
)
def test_difference_bad_parameters_raise(backend, make, match):
    """docs/swav.md: T <= 0, eps <= 0 or negative rounds raise ValueError (the originals
    return inf/NaN, or run 0 rounds for a negative count)."""
    with pytest.raises(ValueError, match=match):
        make()


# ------------------------------------------------------------------------ two gloo ranks

WORLD = 2
TIMEOUT_S = 240  # spawn + imports of two processes on a loaded 2-core machine


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t)
    return t


def _ranked_checks(rank: int) -> None:
    """On each rank: half of the global rows, ours vs the plain originals with their
    all_reduce, fp32 (bf16 is the same code path; the collectives are float32)."""
    full = cosine_scores(WORLD * (B + 10), K, seed=7)
    mine = full.chunk(WORLD)[rank].contiguous()
    rows = mine.shape[0] * WORLD
    for num_iters in (0, 3):
        # solo-learn: SinkhornKnopp(num_iters, eps, world_size) reduces whenever initialized.
        ours = SoloSinkhornKnopp(num_iters, 0.05, WORLD)(mine)
        same = plain_sinkhorn(mine, num_iters, 0.05, scale_rows=rows, reduce=_all_reduce)
        oracle = plain_sinkhorn(mine.double(), num_iters, 0.05, scale_rows=rows, reduce=_all_reduce)
        check(ours, same, oracle, torch.float32, f"solo SinkhornKnopp rank {rank}")
        # The SwAV repository's distributed_sinkhorn(out): B = rows x args.world_size.
        ours = seer_kernels.sinkhorn(mine, epsilon=0.05, iterations=num_iters, process_group="world")
        check(ours, same, oracle, torch.float32, f"SwAV distributed_sinkhorn rank {rank}")
        # lightly: sinkhorn(out, iterations, epsilon, gather_distributed=True).
        ours = lightly_sinkhorn(mine, num_iters, 0.05, True)
        check(ours, same, oracle, torch.float32, f"lightly sinkhorn rank {rank}")
    # lightly's SwaVLoss(sinkhorn_gather_distributed=True), multi-crop with a queue.
    ours_in, same_in, oracle_in = leaves(5, torch.float32, seed=11 + rank)
    queue = [cosine_scores(12, K, seed=60 + 2 * rank + i) for i in range(2)]
    ours = SwAVLoss(sinkhorn_gather_distributed=True)(ours_in[:2], ours_in[2:], queue)
    same = plain_lightly_loss(same_in[:2], same_in[2:], queue, 0.1, 3, 0.05, reduce=_all_reduce)
    q64 = [q.double() for q in queue]
    oracle = plain_lightly_loss(oracle_in[:2], oracle_in[2:], q64, 0.1, 3, 0.05, reduce=_all_reduce)
    check(ours, same, oracle, torch.float32, f"SwaVLoss gathered rank {rank}")
    check_grads(ours_in, same_in, oracle_in, ours, same, oracle, torch.float32, f"SwaVLoss rank {rank}")


def _unequal_rows_check(rank: int) -> None:
    """Ranks with different row counts (not solo-learn's or SwAV's layout: a last batch
    without drop_last): ours weighs every sample alike, equal to the single-process codes
    of all rows; the originals' B = rows x world_size weighs every rank alike instead."""
    sizes = (B, B + 6)
    full = cosine_scores(sum(sizes), K, seed=8)
    mine = full.split(sizes)[rank].contiguous()
    ours = SoloSinkhornKnopp(3, 0.05, WORLD)(mine)
    single = plain_sinkhorn(full.double(), 3, 0.05).split(sizes)[rank]
    check(ours, plain_sinkhorn(full, 3, 0.05).split(sizes)[rank], single, torch.float32, "unequal rows")
    theirs = plain_sinkhorn(mine.double(), 3, 0.05, scale_rows=mine.shape[0] * WORLD, reduce=_all_reduce)
    assert (theirs - single).abs().max() > 1e-3, "the originals differ from one Sinkhorn of all rows"


def _worker(rank: int, init_file: str, backend_name: str) -> None:
    torch.set_num_threads(1)
    os.environ["SEER_KERNELS_BACKEND"] = backend_name
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        _ranked_checks(rank)
        _unequal_rows_check(rank)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend_name", [b for b in RUNNABLE if b != "triton"][-1:])
def test_two_gloo_ranks(backend_name):
    """One spawn for every distributed drop-in, on one compiled backend: the distributed
    passes are shared by every backend, and two interpreted-Triton processes would
    only add minutes on a small machine."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.spawn(
            _worker, args=(os.path.join(tmp, "rendezvous"), backend_name), nprocs=WORLD, join=False
        )
        deadline = time.monotonic() + TIMEOUT_S
        while not ctx.join(timeout=5):  # re-raises a worker's exception with its traceback
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.kill()
                pytest.fail(f"the {WORLD} gloo workers did not finish in {TIMEOUT_S} s")


# ------------------------------------------------------------------------ the plain versions


def test_plain_lightly_matches_lightly():
    """The plain originals above, checked against lightly itself where it is installed."""
    lightly_loss = pytest.importorskip("lightly.loss.swav_loss")
    x = [t.detach().double().requires_grad_() for t in cosine_scores(5 * B, K, seed=2).split(B)]
    queue = [cosine_scores(20, K, seed=3 + i).double() for i in range(2)]
    for iterations in (0, 3):
        torch.testing.assert_close(
            lightly_loss.sinkhorn(x[0], iterations, 0.05),
            plain_sinkhorn(x[0], iterations, 0.05, divide_by_k=False),
        )
        theirs = lightly_loss.SwaVLoss(0.1, iterations, 0.05)(x[:2], x[2:], queue)
        plain = plain_lightly_loss(x[:2], x[2:], queue, 0.1, iterations, 0.05)
        torch.testing.assert_close(theirs, plain)
        for a, b in zip(torch.autograd.grad(theirs, x), torch.autograd.grad(plain, x), strict=True):
            torch.testing.assert_close(a, b)


def test_docs_name_existing_tests():
    """Every test docs/swav.md names for a difference is a test function of tests/."""
    tests = Path(__file__).resolve().parent
    docs = (tests.parent / "docs" / "swav.md").read_text()
    named = set(re.findall(r"\b(test_\w+|_unequal_rows_check)\b", docs)) - {
        "test_dropins",
        "test_swav",
        "test_integrations",
    }
    assert len(named) >= 10
    defined = set(
        re.findall(r"^def (\w+)\(", "".join(f.read_text() for f in tests.glob("test_*.py")), flags=re.M)
    )
    assert named <= defined, f"docs/swav.md names tests that do not exist: {sorted(named - defined)}"

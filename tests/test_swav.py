"""seer_kernels.swav against lightly's SwaVLoss / sinkhorn, against a float64 loop written
from the SwAV paper, and on its own contracts (queue, prototypes, heads, bad input,
autocast, torch.compile). DDP is in test_swav_ddp.py, the lightly patch in
test_integrations.py.

Every comparison runs on each backend that actually runs here (`RUNNABLE`: a backend
that is built but whose kernels are not merged yet raises NotImplementedError and is
left out), so the same tests check the fused backends once they land. The Triton
interpreter is slow: Triton runs only the small-shape cases.
"""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tolerance import FLOOR, assert_close_rule
from torch import nn

import seer_kernels
from seer_kernels import _backend
from seer_kernels.swav import (
    SwAVLoss,
    SwAVProjectionHead,
    SwAVPrototypeLoss,
    SwAVPrototypes,
    SwAVQueue,
    swav_codes,
    swav_loss,
    swav_prototype_loss,
)

lightly_loss = pytest.importorskip("lightly.loss.swav_loss")
lightly_heads = pytest.importorskip("lightly.models.modules.heads")


def runnable_backends(device: str = "cpu") -> list[str]:
    """Backends whose three ops run (forward and backward) on a tiny input on `device`."""
    out = []
    for name in seer_kernels.available_backends(device):
        try:
            seer_kernels.sinkhorn(torch.randn(4, 3), epsilon=0.05, iterations=1, backend=name)
            e = torch.randn(4, 5, requires_grad=True)
            seer_kernels.prototype_scores(e, torch.randn(3, 5), backend=name).sum().backward()
            s = torch.randn(2, 4, 3, requires_grad=True)
            seer_kernels.swav_cross_entropy(s, torch.rand(1, 4, 3), 0.1, backend=name).backward()
        except (NotImplementedError, NameError):
            # Not merged yet: a missing kernel (NotImplementedError from the dispatcher or
            # the wrapper) or a wrapper naming a launcher that does not exist yet.
            continue
        out.append(name)
    return out


RUNNABLE = runnable_backends()
FAST = [b for b in RUNNABLE if b != "triton"]  # interpreted Triton: small shapes only


@pytest.fixture
def default_backend_runs(monkeypatch):
    """Code that passes backend=None (the lightly drop-in, the docs) must get a backend
    that runs: force "reference" while the default one's kernels are not merged."""
    if _backend.resolve(None, torch.device("cpu")) not in RUNNABLE:
        monkeypatch.setenv("SEER_KERNELS_BACKEND", "reference")


def cosine_scores(n: int, k: int, d: int = 32, *, seed: int = 0) -> torch.Tensor:
    """Realistic SwAV scores: cosines of random embeddings with random prototypes."""
    g = torch.Generator().manual_seed(seed)
    e = F.normalize(torch.randn(n, d, generator=g), dim=1)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1)
    return e @ c.t()


def crops(n_crops: int, b: int, k: int, *, seed: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
    s = cosine_scores(n_crops * b, k, seed=seed).to(dtype)
    return [t.clone().requires_grad_() for t in s.split(b)]


def as64(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().double().requires_grad_() for t in ts]


def grad_floor(oracle: torch.Tensor) -> float:
    """The shared fp32 floor (2e-6, for values of size 1) scaled to the gradient's size:
    gradients are O(1 / (B * T * V)), so the absolute 2e-6 would accept anything."""
    return FLOOR[torch.float32] * oracle.abs().max().item()


# ------------------------------------------------------------------------ the oracle


def swav_paper_loss(
    crop_scores: list[torch.Tensor],
    n_assign: int,
    *,
    temperature: float,
    epsilon: float,
    iterations: int,
    queue: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments": eq. (1)-(3) and the Sinkhorn-Knopp of Sec. 3.1 / App. A, as a plain loop
    in the input's dtype (float64 for the oracle). Queue rows join each code computation."""
    n_crops = len(crop_scores)
    total = crop_scores[0].new_zeros(())
    for s in range(n_assign):
        with torch.no_grad():
            c = crop_scores[s].detach()
            if queue is not None:
                c = torch.cat((c, queue[s].to(c.dtype)))
            q_mat = torch.exp(c / epsilon).t()  # Q: K x B, Q = exp(C^T Z / eps)
            q_mat = q_mat / q_mat.sum()
            k, b = q_mat.shape
            for _ in range(iterations):
                q_mat = q_mat / (q_mat.sum(dim=1, keepdim=True) * k)  # Q 1_B = 1_K / K
                q_mat = q_mat / (q_mat.sum(dim=0, keepdim=True) * b)  # Q^T 1_K = 1_B / B
            codes = (q_mat * b).t()[: crop_scores[s].shape[0]]
        sub = crop_scores[0].new_zeros(())
        for t in range(n_crops):
            if t != s:  # l(z_t, q_s) = -sum_k q_s^(k) log p_t^(k), p_t = softmax(z_t^T c / tau)
                sub = sub - (codes * torch.log_softmax(crop_scores[t] / temperature, dim=1)).sum(1).mean()
        total = total + sub / (n_crops - 1)
    return total / n_assign


# ------------------------------------------------------------------------ against lightly


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("with_queue", [False, True], ids=["no_queue", "queue"])
def test_loss_and_grads_match_lightly(backend, with_queue):
    """2 high + 6 low crops, K = 3000: the loss and every crop's gradient."""
    b, k = 32, 3000
    ours_in = crops(8, b, k, seed=1)
    queue = [cosine_scores(64, k, seed=10 + i) for i in range(2)] if with_queue else None
    ref32, ref64 = [t.detach().clone().requires_grad_() for t in ours_in], as64(ours_in)

    ours = SwAVLoss(backend=backend)(ours_in[:2], ours_in[2:], queue)
    lightly32 = lightly_loss.SwaVLoss()(ref32[:2], ref32[2:], queue)
    q64 = None if queue is None else [q.double() for q in queue]
    lightly64 = lightly_loss.SwaVLoss()(ref64[:2], ref64[2:], q64)

    assert ours.shape == lightly32.shape == (1,)
    assert_close_rule(ours, lightly32, lightly64, torch.float32, what="loss")
    torch.testing.assert_close(ours, lightly32, rtol=1e-5, atol=0)
    for a, x, y, z in zip(
        torch.autograd.grad(ours, ours_in),
        torch.autograd.grad(lightly32, ref32),
        torch.autograd.grad(lightly64, ref64),
        range(8),
        strict=True,
    ):
        assert_close_rule(a, x, y, torch.float32, floor=grad_floor(y), what=f"grad crop {z}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("iterations", [0, 1, 3, 10])
@pytest.mark.parametrize("shape", [(64, 3000), (96, 3000), (1, 7), (7, 1), (33, 1023)])
def test_sinkhorn_matches_lightly(backend, iterations, shape):
    """Our fused sinkhorn (the one SwAVLoss calls) vs lightly.loss.swav_loss.sinkhorn."""
    scores = cosine_scores(*shape, seed=3)
    ours = seer_kernels.sinkhorn(scores, epsilon=0.05, iterations=iterations, backend=backend)
    theirs = lightly_loss.sinkhorn(scores, iterations=iterations, epsilon=0.05)
    oracle = lightly_loss.sinkhorn(scores.double(), iterations=iterations, epsilon=0.05)
    assert_close_rule(ours, theirs, oracle, torch.float32, what=f"sinkhorn it={iterations}")


@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize(
    ("n_high", "n_low", "b", "k", "iterations", "epsilon", "temperature", "queue_rows"),
    [
        (2, 6, 16, 300, 3, 0.05, 0.1, 0),
        (2, 6, 16, 300, 3, 0.05, 0.1, 48),
        (2, 0, 1, 7, 0, 0.05, 0.1, 0),
        (1, 1, 7, 1, 3, 0.05, 0.1, 5),
        (3, 2, 7, 33, 10, 0.03, 0.2, 9),
        (1, 4, 5, 64, 1, 0.1, 0.05, 0),
    ],
)
def test_loss_matches_swav_paper_float64(
    backend, n_high, n_low, b, k, iterations, epsilon, temperature, queue_rows
):
    if backend == "triton" and k * b > 5000:
        pytest.skip("interpreted Triton: small shapes only")
    x = crops(n_high + n_low, b, k, seed=4)
    queue = [cosine_scores(queue_rows, k, seed=20 + i) for i in range(n_high)] if queue_rows else None
    kw = dict(temperature=temperature, epsilon=epsilon, iterations=iterations)
    x64 = as64(x)
    oracle = swav_paper_loss(x64, n_high, queue=None if queue is None else [q.double() for q in queue], **kw)
    x32 = [t.detach().clone().requires_grad_() for t in x]
    same_precision = swav_paper_loss(x32, n_high, queue=queue, **kw)
    loss = SwAVLoss(temperature, iterations, epsilon, backend=backend)(x[:n_high], x[n_high:], queue)
    assert_close_rule(loss[0], same_precision, oracle, torch.float32, what="loss")
    # With one assignment crop, crop 0 only feeds the codes: a zero gradient, not unused.
    grad = lambda y, xs: torch.autograd.grad(y, xs, allow_unused=True, materialize_grads=True)  # noqa: E731
    for g, g32, g64 in zip(grad(loss, x), grad(same_precision, x32), grad(oracle, x64), strict=True):
        assert_close_rule(g, g32, g64, torch.float32, floor=grad_floor(g64), what="grad")


@pytest.mark.parametrize("backend", RUNNABLE)
def test_tensor_first_form_equals_module(backend):
    x = crops(5, 6, 20, seed=5)
    queue = torch.stack([cosine_scores(12, 20, seed=30 + i) for i in range(2)])
    stacked = torch.stack(x)
    a = swav_loss(
        stacked,
        2,
        temperature=0.2,
        sinkhorn_iterations=4,
        sinkhorn_epsilon=0.04,
        queue_scores=queue,
        backend=backend,
    )
    b = SwAVLoss(0.2, 4, 0.04, backend=backend)(x[:2], x[2:], list(queue))
    assert a.dim() == 0 and b.shape == (1,)
    torch.testing.assert_close(a, b[0], rtol=1e-6, atol=0)  # same calls; allow reduction order
    # Queue rows before the batch (SwAV's layout) instead of after (lightly's): same codes.
    after = swav_codes(stacked[:2], queue_scores=queue, backend=backend)
    before = torch.stack(
        [
            seer_kernels.sinkhorn(
                torch.cat((queue[a], stacked[a].detach())), epsilon=0.05, iterations=3, backend=backend
            )[12:]
            for a in range(2)
        ]
    )
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-7)


# lightly's own SwaVLoss tests (tests/loss/test_swav_loss.py), run against ours.
@pytest.mark.parametrize("n_low_res", range(6))
@pytest.mark.parametrize("sinkhorn_iterations", range(3))
def test_lightly_cases(default_backend_runs, n_low_res, sinkhorn_iterations):
    criterion = SwAVLoss(sinkhorn_iterations=sinkhorn_iterations)
    eye = lambda *s: [torch.eye(*s) for _ in range(2)]  # noqa: E731
    assert criterion(eye(32, 32), [torch.eye(32, 32)] * n_low_res).detach().numpy() < 0.5
    assert criterion(eye(32, 32), [torch.eye(32, 32)] * n_low_res, eye(128, 32)).detach().numpy() < 0.5
    assert torch.isfinite(criterion(eye(1, 32), [torch.eye(1, 32)] * n_low_res)).all()  # batch of one
    assert criterion(eye(32, 1), [torch.eye(32, 1)] * n_low_res).detach().numpy() < 0.5  # one prototype


def test_gather_distributed_without_distributed_raises_like_lightly():
    with mock.patch.object(dist, "is_available", return_value=False) as available:
        with pytest.raises(ValueError, match="torch.distributed is not available"):
            SwAVLoss(sinkhorn_gather_distributed=True)
        available.assert_called_once()
    with mock.patch.object(dist, "is_available", return_value=True) as available:
        SwAVLoss(sinkhorn_gather_distributed=True)
        available.assert_called_once()


def test_gather_distributed_uninitialized_runs_single_process(default_backend_runs):
    x = crops(4, 8, 10, seed=6)
    a = SwAVLoss(sinkhorn_gather_distributed=True)(x[:2], x[2:])
    b = lightly_loss.SwaVLoss(sinkhorn_gather_distributed=True)(x[:2], x[2:])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=0)


# ------------------------------------------------------------------------ training run


def _train(loss_fn, steps: int = 30) -> list[float]:
    """A tiny SwAV run: MLP backbone, BN projection head, frozen-then-free prototypes and
    a queue that fills after 4 steps, on noisy copies of fixed random data."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = torch.randn(256, 24, generator=g)
    backbone = nn.Sequential(nn.Linear(24, 48), nn.ReLU())
    head = SwAVProjectionHead(48, 48, 16)
    protos = SwAVPrototypes(16, 40, n_steps_frozen_prototypes=3)
    queue = SwAVQueue(64, 16, 2)
    params = [*backbone.parameters(), *head.parameters(), *protos.parameters()]
    opt = torch.optim.SGD(params, lr=0.2, momentum=0.9)
    losses = []
    for step in range(steps):
        x = data[torch.randint(0, 256, (16,), generator=g)]
        views = [x + s * torch.randn(x.shape, generator=g) for s in (0.1, 0.1, 0.3, 0.3, 0.3, 0.3)]
        protos.normalize()
        z = [F.normalize(head(backbone(v)), dim=1) for v in views]
        scores = [protos(e, step) for e in z]
        queue_scores = queue.scores(protos, step)
        loss = loss_fn(scores[:2], scores[2:], None if queue_scores is None else list(queue_scores))
        opt.zero_grad()
        loss.backward()
        opt.step()
        queue.enqueue(torch.stack(z[:2]))
        losses.append(loss.item())
    return losses


def test_training_run_matches_lightly(default_backend_runs):
    ours = _train(SwAVLoss())
    theirs = _train(lightly_loss.SwaVLoss())
    assert abs(ours[-1] - ours[0]) > 1e-3, "the run must train for the curves to say anything"
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------ queue


def test_queue_rounding():
    assert SwAVQueue.rounded_length(3940, 256) == 3840
    assert SwAVQueue.rounded_length(3840, 256) == 3840
    assert SwAVQueue(3940, 8, 2, global_batch=256).length == 3840
    # Two processes of 64: the global 3840 - 3840 % 128 = 3840 rows, 1920 per process.
    assert SwAVQueue(3900, 8, 2, global_batch=128, world_size=2).length == 1920
    with pytest.raises(ValueError):
        SwAVQueue.rounded_length(100, 256)
    with pytest.raises(ValueError):
        SwAVQueue(101, 8, 2, world_size=2)


def test_queue_fill_rule_and_fifo_order():
    queue = SwAVQueue(6, 3, 2)
    protos = SwAVPrototypes(3, 4)
    batches = [torch.full((2, 2, 3), float(i + 1)) for i in range(4)]
    batches = [b + torch.arange(2.0).view(1, 2, 1) / 10 for b in batches]  # rows distinct
    for i in range(3):
        assert not queue.is_full and queue.scores(protos) is None  # used only once full
        queue.enqueue(batches[i])
    assert queue.is_full
    # Newest first: batch 3 (rows 0-1), batch 2, batch 1; then batch 4 pushes batch 1 out.
    torch.testing.assert_close(queue.embeddings, torch.cat([batches[2], batches[1], batches[0]], dim=1))
    queue.enqueue(batches[3])
    torch.testing.assert_close(queue.embeddings, torch.cat([batches[3], batches[2], batches[1]], dim=1))
    # A batch longer than the queue keeps its last rows.
    big = torch.arange(2 * 8 * 3, dtype=torch.float32).view(2, 8, 3)
    queue.enqueue(big)
    torch.testing.assert_close(queue.embeddings, big[:, 2:])


def test_queue_detaches_and_checks_shape():
    queue = SwAVQueue(4, 3, 2)
    e = torch.randn(2, 2, 3, requires_grad=True)
    queue.enqueue(e)
    assert not queue.embeddings.requires_grad
    with pytest.raises(ValueError, match="n_crops=2"):
        queue.enqueue(torch.randn(3, 2, 3))
    with pytest.raises(ValueError, match="dim=3"):
        queue.enqueue(torch.randn(2, 2, 4))


def test_queue_state_dict_round_trip():
    torch.manual_seed(0)
    queue = SwAVQueue(8, 5, 2)
    for _ in range(4):
        queue.enqueue(torch.randn(2, 2, 5))
    assert queue.is_full
    state = {k: v.clone() for k, v in queue.state_dict().items()}
    assert set(state) == {"queue", "filled"}
    resumed = SwAVQueue(8, 5, 2)
    assert not resumed.is_full
    resumed.load_state_dict(state)
    assert resumed.is_full
    torch.testing.assert_close(resumed.embeddings, queue.embeddings)
    # A half-filled queue resumes half-filled.
    half = SwAVQueue(8, 5, 2)
    half.enqueue(torch.randn(2, 4, 5))
    again = SwAVQueue(8, 5, 2)
    again.load_state_dict(half.state_dict())
    assert not again.is_full
    again.enqueue(torch.randn(2, 4, 5))
    assert again.is_full


@pytest.mark.parametrize("backend", RUNNABLE)
def test_queue_scores_use_current_prototypes(backend):
    torch.manual_seed(0)
    queue = SwAVQueue(4, 6, 2)
    queue.enqueue(torch.randn(2, 4, 6))
    protos = SwAVPrototypes(6, [5, 7], backend=backend)
    first = queue.scores(protos)
    assert [tuple(s.shape) for s in first] == [(2, 4, 5), (2, 4, 7)]
    expected = F.normalize(queue.embeddings, dim=2) @ F.normalize(protos.heads[1].weight, dim=1).t()
    torch.testing.assert_close(first[1], expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        protos.heads[0].weight.add_(1.0)
    assert not torch.allclose(queue.scores(protos)[0], first[0])
    assert not first[0].requires_grad


# ------------------------------------------------------------------------ prototypes / heads


@pytest.mark.parametrize("backend", RUNNABLE)
def test_prototypes_frozen_for_exactly_n_steps(backend):
    torch.manual_seed(0)
    n = 3
    protos = SwAVPrototypes(8, 10, n_steps_frozen_prototypes=n, backend=backend)
    opt = torch.optim.SGD(protos.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    with pytest.raises(ValueError, match="step"):
        protos(torch.randn(4, 8))
    for step in range(n + 2):
        before = protos.heads[0].weight.detach().clone()
        x = torch.randn(4, 8, requires_grad=True)
        opt.zero_grad()
        protos(x, step).square().sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0  # the embeddings still learn
        opt.step()
        changed = not torch.equal(before, protos.heads[0].weight)
        assert changed == (step >= n), f"step {step}: prototypes changed={changed}"


def test_prototypes_normalize_and_values(default_backend_runs):
    torch.manual_seed(0)
    protos = SwAVPrototypes(8, [10, 3])
    with torch.no_grad():
        for h in protos.heads:
            h.weight.mul_(torch.rand(h.weight.shape[0], 1) * 5 + 0.1)
    protos.normalize()
    for h in protos.heads:
        torch.testing.assert_close(h.weight.norm(dim=1), torch.ones(h.weight.shape[0]))
        assert h.bias is None
    assert list(dict(protos.named_parameters())) == ["heads.0.weight", "heads.1.weight"]
    assert isinstance(SwAVPrototypes(8, 10)(torch.randn(2, 8)), torch.Tensor)
    assert isinstance(SwAVPrototypes(8, [10])(torch.randn(2, 8)), list)  # a list stays a list


@pytest.mark.parametrize("backend", RUNNABLE)
def test_prototypes_match_swav_and_lightly(backend):
    """cosine=True: SwAV's values from unnormalized embeddings, gradient = the tangent part
    of SwAV's; cosine=False: lightly's layer with its bias at zero, values and gradients."""
    torch.manual_seed(0)
    theirs = lightly_heads.SwaVPrototypes(16, 12)
    with torch.no_grad():
        theirs.heads[0].bias.zero_()
    ours = SwAVPrototypes(16, 12, backend=backend)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert missing == [] and unexpected == ["heads.0.bias"]
    ours.normalize()
    with torch.no_grad():
        theirs.heads[0].weight.copy_(ours.heads[0].weight)
    x = torch.randn(5, 16) * 3
    xn = F.normalize(x, dim=1)
    torch.testing.assert_close(ours(x), theirs(xn), rtol=1e-5, atol=1e-6)

    plain = SwAVPrototypes(16, 12, cosine=False, backend=backend)
    plain.load_state_dict(ours.state_dict())
    g = torch.randn(5, 12)
    plain(xn).backward(g)
    theirs(xn).backward(g)
    w_grad = theirs.heads[0].weight.grad
    torch.testing.assert_close(plain.heads[0].weight.grad, w_grad, rtol=1e-5, atol=1e-6)
    ours(xn).backward(g)
    w = ours.heads[0].weight.detach()
    tangent = w_grad - (w_grad * w).sum(1, keepdim=True) * w
    torch.testing.assert_close(ours.heads[0].weight.grad, tangent, rtol=1e-4, atol=1e-6)


def test_projection_heads():
    lightly_head = lightly_heads.SwaVProjectionHead(32, 64, 16)
    ours = SwAVProjectionHead(32, 64, 16)
    assert list(ours.state_dict()) == list(lightly_head.state_dict())
    ours.load_state_dict(lightly_head.state_dict())
    x = torch.randn(6, 32)
    torch.testing.assert_close(ours(x), lightly_head(x))
    seer = SwAVProjectionHead(37, 81, 25, num_layers=3, batch_norm=False)  # SEER's shape, scaled down
    linears = [m for m in seer.layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(37, 81), (81, 81), (81, 25)]
    assert all(m.bias is not None for m in linears)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in seer.layers)
    assert seer(torch.randn(2, 37)).shape == (2, 25)


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("high", "low", "queue", "match"),
    [
        ([], [torch.randn(4, 5)], None, "at least one crop"),
        ([torch.randn(4, 5)], [], None, "at least two crops"),
        ([torch.randn(4, 5), torch.randn(3, 5)], [], None, "shape"),
        ([torch.randn(4, 5)], [torch.randn(4, 5), torch.randn(4, 6)], None, "K=5"),
        ([torch.randn(4, 5)], [torch.randn(5)], None, "2-D"),
        ([torch.randn(4, 5)] * 2, [], [torch.randn(8, 5)], "one \\(Q, K\\) score tensor per"),
        ([torch.randn(4, 5)] * 2, [], [torch.randn(8, 5), torch.randn(8, 4)], "K=5"),
        ([torch.randn(4, 5)] * 2, [], torch.randn(8, 5), "\\(A, Q, K\\)"),
    ],
)
def test_bad_input_raises_value_error(default_backend_runs, high, low, queue, match):
    with pytest.raises(ValueError, match=match):
        SwAVLoss()(high, low, queue)


def test_bad_input_types_and_stacked_form(default_backend_runs):
    with pytest.raises(TypeError):
        SwAVLoss()([torch.randn(4, 5), "crop"], [])
    with pytest.raises(TypeError):
        SwAVLoss()((t for t in [torch.randn(4, 5)] * 2), [])
    with pytest.raises(ValueError, match="V, B, K"):
        swav_loss(torch.randn(4, 5), 1)
    with pytest.raises(ValueError, match="n_assign"):
        swav_loss(torch.randn(3, 4, 5), 4)


# ------------------------------------------------------------------------ autocast, compile


@pytest.mark.parametrize("backend", FAST)
def test_autocast_bf16(backend):
    """Under CPU bf16 autocast the prototypes score in bf16 and the loss is the float32
    loss of those bf16 scores (lightly would compute its codes in bf16)."""
    torch.manual_seed(0)
    proj = nn.Linear(24, 16)
    protos = SwAVPrototypes(16, 50, backend=backend)
    x = [torch.randn(8, 24) for _ in range(4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = [protos(proj(v)) for v in x]
        assert all(s.dtype == torch.bfloat16 for s in scores)
        loss = SwAVLoss(backend=backend)(scores[:2], scores[2:])
    assert loss.dtype == torch.float32
    s64 = [s.detach().double() for s in scores]
    oracle = swav_paper_loss(s64, 2, temperature=0.1, epsilon=0.05, iterations=3)
    torch.testing.assert_close(loss[0].double(), oracle, rtol=1e-4, atol=1e-5)
    loss.backward()
    for p in (*proj.parameters(), *protos.parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("backend", FAST)
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    x = crops(4, 8, 30, seed=7)
    queue = [cosine_scores(16, 30, seed=40 + i) for i in range(2)]
    criterion = SwAVLoss(backend=backend)
    compiled = torch.compile(criterion, fullgraph=True)
    eager = criterion(x[:2], x[2:], queue)
    got = compiled(x[:2], x[2:], queue)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(got, x), torch.autograd.grad(eager, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

    # aot_eager: the same full-graph capture and autograd tracing through the ops' fake
    # kernels, without the C++ compile of four inductor graphs (frozen flips recompile).
    protos = SwAVPrototypes(12, [9, 4], n_steps_frozen_prototypes=2, backend=backend)
    fn = torch.compile(protos, fullgraph=True, backend="aot_eager")
    e = torch.randn(5, 12)
    for step in (0, 1, 2, 3):
        out, ref = fn(e, step), protos(e, step)
        for o, r in zip(out, ref, strict=True):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-6)
            assert o.requires_grad == (step >= 2)


# ------------------------------------------------------------------------ the fused head

HEAD_BACKENDS = [
    b for b in seer_kernels.available_backends("cpu", op="prototype_cross_entropy") if b in RUNNABLE
]


def _head_inputs(v=6, b=8, d=16, k=30, *, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = [torch.randn(b, d, generator=g).requires_grad_() for _ in range(v)]
    return emb, torch.randn(2, 12, d, generator=g)


@pytest.mark.parametrize("with_queue", [False, True])
@pytest.mark.parametrize("backend", HEAD_BACKENDS)
def test_prototype_loss_equals_the_loss_of_the_scores(backend, with_queue):
    """SwAVPrototypeLoss(embeddings, prototypes) == SwAVLoss(prototypes(embeddings)):
    value and the gradients of the embeddings and the prototype weight (the tolerance
    rule, against the float64 loss of the scores)."""
    emb, queue = _head_inputs(seed=1)
    queue = queue if with_queue else None
    torch.manual_seed(0)
    protos = SwAVPrototypes(16, 30, backend=backend)
    weight = protos.heads[0].weight

    def fused(e, w):
        return SwAVPrototypeLoss(backend=backend)(
            e[:2], e[2:], w, None if queue is None else queue.to(w.dtype)
        )

    def composed(e, w):
        scores = [seer_kernels.prototype_scores(x, w, backend="reference") for x in e]
        q = (
            None
            if queue is None
            else [seer_kernels.prototype_scores(x, w, backend="reference") for x in queue.to(w.dtype)]
        )
        return SwAVLoss(backend="reference")(scores[:2], scores[2:], q)

    def run(fn, dtype):
        e = [x.detach().to(dtype).requires_grad_() for x in emb]
        w = weight.detach().to(dtype).requires_grad_()
        loss = fn(e, w)
        return [loss.detach(), *torch.autograd.grad(loss, [*e, w])]

    ours, same, oracle = run(fused, torch.float32), run(composed, torch.float32), run(composed, torch.float64)
    for i, (x, y, z) in enumerate(zip(ours, same, oracle, strict=True)):
        assert_close_rule(x, y, z, torch.float32, floor=grad_floor(z) if i else None, what=f"output {i}")
    # Through the module: the same, and its loss has lightly's shape (1,).
    loss = SwAVPrototypeLoss(backend=backend)(emb[:2], emb[2:], protos, queue)
    assert loss.shape == (1,)
    torch.testing.assert_close(loss, ours[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", HEAD_BACKENDS)
def test_prototype_loss_freezes_and_runs_inside_the_prototypes_forward(backend):
    """While frozen the prototype weight gets no gradient; the loss is computed in the
    prototypes' forward (a forward hook sees it), where FSDP gathers the weight."""
    emb, _ = _head_inputs(seed=2)
    protos = SwAVPrototypes(16, 30, n_steps_frozen_prototypes=2, backend=backend)
    seen = []
    protos.register_forward_hook(lambda module, args, out: seen.append(out))
    criterion = SwAVPrototypeLoss(backend=backend)
    criterion(emb[:2], emb[2:], protos, step=1).backward()
    assert protos.heads[0].weight.grad is None and emb[0].grad is not None
    criterion(emb[:2], emb[2:], protos, step=2).backward()
    assert protos.heads[0].weight.grad is not None
    assert len(seen) == 2 and seen[0].dim() == 0
    with pytest.raises(ValueError, match="pass the current `step`"):
        criterion(emb[:2], emb[2:], protos)


def test_prototype_loss_matches_the_paper_in_float64(default_backend_runs):
    emb, _ = _head_inputs(seed=3)
    e64 = [x.detach().double() for x in emb]
    w = F.normalize(torch.randn(30, 16, dtype=torch.float64), dim=1)
    loss = swav_prototype_loss(torch.stack(e64), w, 2, temperature=0.1)
    scores = [F.normalize(x, dim=1) @ w.t() for x in e64]
    oracle = swav_paper_loss(scores, 2, temperature=0.1, epsilon=0.05, iterations=3)
    torch.testing.assert_close(loss, oracle, rtol=1e-10, atol=1e-12)


def test_prototype_loss_bad_input(default_backend_runs):
    emb, queue = _head_inputs(seed=4)
    protos = SwAVPrototypes(16, 30)
    criterion = SwAVPrototypeLoss()
    with pytest.raises(ValueError, match="at least one crop"):
        criterion([], emb, protos)
    with pytest.raises(ValueError, match="at least two crops"):
        criterion(emb[:1], [], protos)
    with pytest.raises(ValueError, match="one \\(B, D\\) shape"):
        criterion(emb[:2], [emb[2][:4]], protos)
    with pytest.raises(ValueError, match="queue_embeddings must be"):
        criterion(emb[:2], emb[2:], protos, queue[:1])
    with pytest.raises(ValueError, match="single prototype head"):
        criterion(emb[:2], emb[2:], SwAVPrototypes(16, [30, 20]))
    with pytest.raises(TypeError, match="prototypes must be"):
        criterion(emb[:2], emb[2:], "prototypes")
    with pytest.raises(ValueError, match="n_assign must be in"):
        swav_prototype_loss(torch.stack(emb), protos.heads[0].weight, 7)


def test_math_of_the_oracle():
    """The oracle itself: with identical crops and a sharp Sinkhorn the loss reaches the
    entropy floor; K = 1 gives exactly 0 (no test that cannot fail)."""
    s = torch.eye(8, dtype=torch.float64)
    loss = swav_paper_loss([s, s, s], 2, temperature=0.01, epsilon=0.01, iterations=10)
    assert loss.item() < 1e-3
    ones = torch.ones(5, 1, dtype=torch.float64)
    assert swav_paper_loss([ones, ones], 1, temperature=0.1, epsilon=0.05, iterations=3).item() == 0
    uniform = torch.zeros(4, 6, dtype=torch.float64)
    loss = swav_paper_loss([uniform, uniform], 1, temperature=0.1, epsilon=0.05, iterations=3)
    assert math.isclose(loss.item(), math.log(6), rel_tol=1e-12)

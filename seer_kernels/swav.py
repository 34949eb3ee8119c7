"""SwAV building blocks on the fused ops: the loss, the prototypes, the projection head
and the feature queue, drop-in for lightly's `SwaVLoss` / `SwaVPrototypes` /
`SwaVProjectionHead` and for the loop of the original SwAV script, and the fused head.

    from seer_kernels.swav import SwAVLoss, SwAVPrototypes, SwAVProjectionHead, SwAVQueue
    from seer_kernels.swav import SwAVPrototypeLoss  # embeddings in, loss out: no score matrix

Everything runs on the public ops (`seer_kernels.sinkhorn`, `prototype_scores`,
`swav_cross_entropy`, `prototype_cross_entropy`), so the backend underneath
(`reference`, `cpu`, `cuda`, `triton`) is picked per call as everywhere else
(`backend=None`, or SEER_KERNELS_BACKEND).

`SwAVLoss` takes scores, as lightly's does. `SwAVPrototypeLoss` (and the functional
`swav_prototype_loss`) takes the embeddings and the prototypes instead: the assignment
crops' (and queue's) scores under no_grad, one Sinkhorn call on the (A, B + Q, K) scores,
then `prototype_cross_entropy`, which never holds the (V B, K) scores of all crops nor
their gradient. It runs through `SwAVPrototypes.forward(x, fused_loss=...)`, so DDP and
FSDP see the prototype weights used inside the module's forward.

Per step the loss costs ONE fused Sinkhorn call for all assignment crops (on (A, B + Q, K)
scores: each crop stays its own transport problem, in the same launches) and ONE fused
cross-entropy over every (assignment crop, other crop) pair, instead of lightly's A
Sinkhorn calls and A * (V - 1) log-softmax passes.

Differences from lightly, on purpose (docs/swav.md lists every one, with the test that
shows it):
- `SwAVPrototypes` has no bias. SwAV's prototypes are `nn.Linear(dim, K, bias=False)`;
  lightly's became `nn.Linear(dim, K)` with the default bias=True, so its scores are
  cosine + a trained bias (initialized uniform in +-1/sqrt(dim), the same size as the
  cosines). Checkpoints of lightly's prototypes load into ours with `strict=False`
  (the `heads.<i>.bias` keys are dropped; the weights keep their names).
- With `cosine=True` (default) the prototypes normalize the embeddings AND the prototype
  rows inside the fused op: the forward values equal SwAV's (normalized embeddings
  times prototypes normalized in place each step) without the F.normalize call, and the
  prototype gradient is the tangent component of SwAV's (SwAV's radial component is
  removed by its next `normalize()` anyway). `cosine=False` is SwAV's exact `x @ W^T`.
- The loss is float32 (float64 for float64 scores) whatever the score dtype: lightly's
  is in the scores' dtype, which under bf16 autocast rounds the codes to bf16.
- A single crop (V = 1) raises ValueError; lightly divides by V - 1 = 0 and returns NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from seer_kernels.ops.prototype_cross_entropy import prototype_cross_entropy
from seer_kernels.ops.prototype_scores import prototype_scores
from seer_kernels.ops.sinkhorn import sinkhorn
from seer_kernels.ops.swav_cross_entropy import swav_cross_entropy

__all__ = [
    "SwAVLoss",
    "SwAVProjectionHead",
    "SwAVPrototypeLoss",
    "SwAVPrototypes",
    "SwAVQueue",
    "gather_group",
    "swav_codes",
    "swav_loss",
    "swav_prototype_loss",
]

QueueScores = torch.Tensor | Sequence[torch.Tensor] | None


# ------------------------------------------------------------------------ checks


# The checks below take the name of a crop's last dimension: K for scores (SwAVLoss,
# swav_loss), D for embeddings (SwAVPrototypeLoss, swav_prototype_loss).
_LAST = {"K": "prototypes", "D": "features"}


def _score_matrix(name: str, value, k: int | None = None, last: str = "K") -> torch.Tensor:
    """A (rows, K) score tensor (or (rows, D) embeddings), K matching `k` when given."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (B, {last}) tensor, got shape {tuple(value.shape)}")
    if k is not None and value.shape[1] != k:
        raise ValueError(
            f"{name} has {last}={value.shape[1]} {_LAST[last]} but the crops have {last}={k} "
            f"(shape {tuple(value.shape)})"
        )
    return value


def _crop_list(name: str, crops, last: str = "K") -> list[torch.Tensor]:
    """A list of per-crop tensors from a list/tuple of them or a stacked tensor."""
    if isinstance(crops, torch.Tensor):
        if crops.dim() != 3:
            raise ValueError(
                f"{name} as one tensor must be (n_crops, B, {last}), got shape {tuple(crops.shape)}"
            )
        return list(crops.unbind(0))
    if not isinstance(crops, Sequence):
        raise TypeError(f"{name} must be a list of (B, {last}) tensors, got {type(crops).__name__}")
    return list(crops)


def _check_crops(
    high: list[torch.Tensor], low: list[torch.Tensor], kind: str = "outputs", last: str = "K"
) -> None:
    """Every crop must be (B, K) with the same B and K as the first high-resolution crop;
    `kind` names the arguments (high_resolution_{kind}, low_resolution_{kind})."""
    first = f"high_resolution_{kind}"
    if len(high) == 0:
        raise ValueError(f"{first} must hold at least one crop, got an empty list")
    shape = _score_matrix(f"{first}[0]", high[0], last=last).shape
    for group, crops in ((first, high), (f"low_resolution_{kind}", low)):
        for i, crop in enumerate(crops):
            _score_matrix(f"{group}[{i}]", crop, shape[1], last)
            if crop.shape != shape:
                raise ValueError(
                    f"every crop must have one (B, {last}) shape, {tuple(shape)} as {first}[0], "
                    f"got {group}[{i}] of shape {tuple(crop.shape)}"
                )
    if len(high) + len(low) < 2:
        raise ValueError(
            "SwAV's swapped prediction needs at least two crops, got one high-resolution crop and no "
            "low-resolution crop"
        )


def _check_queue(queue_scores: QueueScores, n_assign: int, k: int) -> list[torch.Tensor] | None:
    """queue_scores: None, an (A, Q, K) tensor, or A tensors (Q_a, K); one per assignment crop."""
    if queue_scores is None:
        return None
    if isinstance(queue_scores, torch.Tensor):
        if queue_scores.dim() != 3:
            raise ValueError(
                f"queue_scores must be an (A, Q, K) tensor or a list of A (Q, K) tensors, "
                f"got a tensor of shape {tuple(queue_scores.shape)}"
            )
        queue_scores = queue_scores.unbind(0)
    queue = _crop_list("queue_outputs", queue_scores)
    if len(queue) != n_assign:
        raise ValueError(
            f"the queue must hold one (Q, K) score tensor per assignment crop: got {len(queue)} for "
            f"{n_assign} assignment crop(s)"
        )
    return [_score_matrix(f"queue_outputs[{i}]", q, k) for i, q in enumerate(queue)]


def _check_stacked(scores, n_assign, name: str = "scores", last: str = "K") -> None:
    """`scores` (V, B, K) (or embeddings (V, B, D)) of V crops, the first n_assign of them
    assignment crops."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 3:
        raise ValueError(f"{name} must be a 3-D (V, B, {last}) tensor, got shape {tuple(scores.shape)}")
    if isinstance(n_assign, bool) or not isinstance(n_assign, int):
        raise TypeError(f"n_assign must be an int, got {type(n_assign).__name__}")
    if not 1 <= n_assign <= scores.shape[0]:
        raise ValueError(f"n_assign must be in [1, V={scores.shape[0]}], got {n_assign}")


# ------------------------------------------------------------------------ loss


def gather_group(gather_distributed: bool):
    """The process group lightly's `sinkhorn_gather_distributed` means: the default group
    when torch.distributed is initialized with more than one process, else None (lightly
    silently runs single-process when it is not initialized)."""
    if not (gather_distributed and dist.is_available() and dist.is_initialized()):
        return None
    return "world" if dist.get_world_size() > 1 else None


def swav_codes(
    assign_scores: torch.Tensor,
    *,
    epsilon: float = 0.05,
    iterations: int = 3,
    queue_scores: QueueScores = None,
    process_group=None,
    backend: str | None = None,
) -> torch.Tensor:
    """Sinkhorn codes of the assignment crops: (A, B, K) scores -> (A, B, K) float32 codes.

    Each crop is its own transport problem over its B batch rows plus its queue rows
    (`queue_scores[a]`, appended after the batch as lightly does; SwAV prepends them,
    which gives the same codes). The queue rows' codes are dropped. No gradient."""
    n_assign, b, k = assign_scores.shape
    queue = _check_queue(queue_scores, n_assign, k)
    run = functools.partial(
        sinkhorn, epsilon=epsilon, iterations=iterations, process_group=process_group, backend=backend
    )
    rows = assign_scores.detach()
    if queue is None or len({q.shape[0] for q in queue}) == 1:
        # One call for all crops: (A, B + Q, K), each crop its own problem.
        if queue is not None:
            rows = torch.cat((rows, torch.stack([q.detach() for q in queue]).to(rows.dtype)), dim=1)
        return run(rows)[:, :b]
    # Queues of different lengths per crop: one call each.
    return torch.stack(
        [run(torch.cat((rows[a], q.detach().to(rows.dtype))))[:b] for a, q in enumerate(queue)]
    )


def swav_loss(
    scores: torch.Tensor,
    n_assign: int,
    *,
    temperature: float = 0.1,
    sinkhorn_iterations: int = 3,
    sinkhorn_epsilon: float = 0.05,
    queue_scores: QueueScores = None,
    process_group=None,
    backend: str | None = None,
) -> torch.Tensor:
    """SwAV's loss on stacked crop scores, for trainers that already stack.

    Args:
        scores: (V, B, K) prototype scores of V crops; the first `n_assign` are the
            assignment crops (SwAV's crops_for_assign = 0..A-1).
        n_assign: A, 1 <= A <= V.
        temperature: softmax temperature of the predictions (SwAV 0.1).
        sinkhorn_iterations, sinkhorn_epsilon: Sinkhorn rounds and regularization.
        queue_scores: None, (A, Q, K) or A tensors (Q_a, K): scores of queued embeddings
            of each assignment crop, used only by the Sinkhorn.
        process_group: torch.distributed group (or "world") the Sinkhorn spans.
        backend: forced backend of every op, or None.
    Returns: the scalar loss, float32 (float64 for float64 scores), differentiable in
    `scores`: mean over a < A of 1/(V-1) sum_{v != a} CE(codes[a], softmax(scores[v] / T)).
    """
    _check_stacked(scores, n_assign)
    codes = swav_codes(
        scores[:n_assign],
        epsilon=sinkhorn_epsilon,
        iterations=sinkhorn_iterations,
        queue_scores=queue_scores,
        process_group=process_group,
        backend=backend,
    )
    return swav_cross_entropy(scores, codes, temperature, backend=backend)


class _SwAVSettings(nn.Module):
    """lightly's SwaVLoss arguments, shared by SwAVLoss and SwAVPrototypeLoss."""

    def __init__(
        self,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_gather_distributed: bool = False,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if sinkhorn_gather_distributed and not dist.is_available():
            raise ValueError(
                "sinkhorn_gather_distributed is True but torch.distributed is not available; "
                "set sinkhorn_gather_distributed=False or use a torch build with distributed support"
            )
        self.temperature = temperature
        self.sinkhorn_iterations = sinkhorn_iterations
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_gather_distributed = sinkhorn_gather_distributed
        self.backend = backend

    def _settings(self) -> dict:
        """The keyword arguments of swav_loss / swav_prototype_loss these settings give."""
        return {
            "temperature": self.temperature,
            "sinkhorn_iterations": self.sinkhorn_iterations,
            "sinkhorn_epsilon": self.sinkhorn_epsilon,
            "process_group": gather_group(self.sinkhorn_gather_distributed),
            "backend": self.backend,
        }


class SwAVLoss(_SwAVSettings):
    """lightly's `SwaVLoss` on the fused ops: same arguments, same value, same gradients.

    Every high-resolution crop is an assignment crop. `forward` returns a tensor of
    shape (1,) as lightly's does (`swav_loss` returns a 0-d tensor). `backend` (keyword
    only, not in lightly) forces the backend of every op; None picks the fastest.

    Raises ValueError at construction when `sinkhorn_gather_distributed` is True and
    torch.distributed is not available (as lightly), and in `forward` for crops of
    different shapes, an empty high-resolution list, a single crop in all, or queue
    scores that do not match (count or K).
    """

    def subloss(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """lightly's per-pair cross-entropy CE(q, softmax(z / T)), on the fused op (the
        first crop of the pair stack is the assignment crop and is skipped)."""
        return swav_cross_entropy(torch.stack((z, z)), q.unsqueeze(0), self.temperature, backend=self.backend)

    def forward(
        self,
        high_resolution_outputs: Sequence[torch.Tensor],
        low_resolution_outputs: Sequence[torch.Tensor],
        queue_outputs: QueueScores = None,
    ) -> torch.Tensor:
        """Args as lightly: lists of (B, K) scores of the high- and low-resolution crops,
        and optionally one (Q, K) tensor of queue scores per high-resolution crop."""
        high = _crop_list("high_resolution_outputs", high_resolution_outputs)
        low = _crop_list("low_resolution_outputs", low_resolution_outputs)
        _check_crops(high, low)
        if queue_outputs is not None and len(queue_outputs) > len(high):
            # lightly reads queue_outputs[i] of each high-resolution crop i only.
            queue_outputs = queue_outputs[: len(high)]
        loss = swav_loss(torch.stack(high + low), len(high), queue_scores=queue_outputs, **self._settings())
        return loss.reshape(1)


def _check_embeddings(embeddings, n_assign, queue_embeddings) -> torch.Tensor | None:
    _check_stacked(embeddings, n_assign, "embeddings", "D")
    d = embeddings.shape[2]
    if queue_embeddings is None:
        return None
    if not isinstance(queue_embeddings, torch.Tensor):
        queue_embeddings = torch.stack(_crop_list("queue_embeddings", queue_embeddings, "D"))
    if queue_embeddings.dim() != 3 or queue_embeddings.shape[0] != n_assign or queue_embeddings.shape[2] != d:
        raise ValueError(
            f"queue_embeddings must be (A={n_assign}, Q, D={d}): one (Q, D) tensor per assignment crop, "
            f"got shape {tuple(queue_embeddings.shape)}"
        )
    return queue_embeddings


def swav_prototype_loss(
    embeddings: torch.Tensor,
    prototypes: torch.Tensor,
    n_assign: int,
    *,
    temperature: float = 0.1,
    sinkhorn_iterations: int = 3,
    sinkhorn_epsilon: float = 0.05,
    queue_embeddings: torch.Tensor | Sequence[torch.Tensor] | None = None,
    normalize: bool = True,
    process_group=None,
    backend: str | None = None,
    return_scores: bool = False,
):
    """SwAV's loss from the crops' embeddings and the prototypes, without the scores of
    all crops: `swav_loss(prototype_scores(e, p).view(V, B, K), n_assign, ...)` in value and
    gradients, computed as
        scores = prototype_scores([e[:A] | queue], p) under no_grad      (A, B + Q, K)
        codes = sinkhorn(scores)                                          one call, A problems
        loss = prototype_cross_entropy(e, p, codes[:, :B], T)             fused, no (V B, K)

    Args:
        embeddings: (V, B, D) embeddings of V crops; the first `n_assign` are the
            assignment crops (SwAV's crops_for_assign = 0..A-1).
        prototypes: (K, D) prototype weights (differentiable, as the embeddings).
        n_assign: A, 1 <= A <= V.
        temperature, sinkhorn_iterations, sinkhorn_epsilon: as `swav_loss`.
        queue_embeddings: None, or (A, Q, D) (or A tensors (Q, D)) queued embeddings of
            each assignment crop (`SwAVQueue.embeddings`), scored with the current
            prototypes for the Sinkhorn only.
        normalize: cosine scores (both operands normalized inside the ops), or x @ W^T.
        process_group: torch.distributed group (or "world") the Sinkhorn spans.
        backend: forced backend of every op, or None.
        return_scores: also return the (A, B + Q, K) scores the Sinkhorn ran on (no
            gradient), for monitoring.
    Returns: the 0-d loss, float32 (float64 for float64 operands); with return_scores,
    (loss, scores).
    """
    queue = _check_embeddings(embeddings, n_assign, queue_embeddings)
    b, d = embeddings.shape[1:]
    with torch.no_grad():
        rows = embeddings[:n_assign].detach()
        if queue is not None:
            rows = torch.cat((rows, queue.detach().to(rows.dtype)), dim=1)
        a, n = rows.shape[:2]
        scores = prototype_scores(
            rows.reshape(a * n, d), prototypes.detach(), normalize=normalize, backend=backend
        ).view(a, n, -1)
        codes = sinkhorn(
            scores,
            epsilon=sinkhorn_epsilon,
            iterations=sinkhorn_iterations,
            process_group=process_group,
            backend=backend,
        )
    loss = prototype_cross_entropy(
        embeddings, prototypes, codes[:, :b], temperature, normalize=normalize, backend=backend
    )
    return (loss, scores) if return_scores else loss


class SwAVPrototypeLoss(_SwAVSettings):
    """`SwAVLoss` fused with the prototype layer: the same arguments and value, but
    `forward` takes the crops' embeddings and the `SwAVPrototypes` instead of their
    scores, and never forms the (V B, K) scores of all crops or their gradient
    (`swav_prototype_loss`; the op is `seer_kernels.prototype_cross_entropy`).

    forward(high_resolution_embeddings, low_resolution_embeddings, prototypes,
    queue_embeddings=None, step=None): lists of (B, D) embeddings (or stacked tensors);
    `prototypes` a single-head `SwAVPrototypes` (its cosine flag and freezing apply; pass
    `step` while it freezes) or a (K, D) weight tensor (cosine scores); `queue_embeddings`
    one (Q, D) tensor of queued embeddings per high-resolution crop
    (`SwAVQueue.embeddings`). Returns a tensor of shape (1,), as `SwAVLoss`.
    """

    def forward(
        self,
        high_resolution_embeddings: Sequence[torch.Tensor] | torch.Tensor,
        low_resolution_embeddings: Sequence[torch.Tensor] | torch.Tensor,
        prototypes: SwAVPrototypes | torch.Tensor,
        queue_embeddings: torch.Tensor | Sequence[torch.Tensor] | None = None,
        step: int | None = None,
    ) -> torch.Tensor:
        high = _crop_list("high_resolution_embeddings", high_resolution_embeddings, "D")
        low = _crop_list("low_resolution_embeddings", low_resolution_embeddings, "D")
        _check_crops(high, low, "embeddings", "D")
        fused = functools.partial(
            swav_prototype_loss, n_assign=len(high), queue_embeddings=queue_embeddings, **self._settings()
        )
        embeddings = torch.stack(high + low)
        if isinstance(prototypes, SwAVPrototypes):
            loss = prototypes(embeddings, step, fused_loss=fused)
        elif isinstance(prototypes, torch.Tensor):
            loss = fused(embeddings, prototypes)
        else:
            raise TypeError(
                f"prototypes must be a SwAVPrototypes or a (K, D) weight tensor, got {type(prototypes).__name__}"
            )
        return loss.reshape(1)


# ------------------------------------------------------------------------ heads


class SwAVPrototypes(nn.Module):
    """SwAV's prototypes (one or several heads), bias-free, scored by the fused op.

    Args:
        input_dim: embedding size D.
        n_prototypes: K, or a list of K's for SwAV's multi-prototype heads.
        n_steps_frozen_prototypes: the prototypes get no gradient while
            `step < n_steps_frozen_prototypes` (SwAV's freeze_prototypes_niters); `step`
            must then be passed to forward (ValueError otherwise, as lightly).
        cosine: normalize embeddings and prototype rows inside the op (default), or
            compute SwAV's plain `x @ W^T` (normalize x yourself, call normalize()).
        backend: forced backend of prototype_scores, or None.

    forward(x, step) takes (..., D) embeddings (as lightly's linear heads) and returns
    (..., K) scores, or a list of them for a list of sizes. forward(x, step,
    fused_loss=fn) returns fn(x, weight, normalize=cosine) instead, with the head's (K, D)
    weight: how `SwAVPrototypeLoss` computes its loss inside this module's forward. While
    frozen the prototypes enter the op detached, so their `.grad` stays None and torch
    optimizers skip them (no weight decay, no momentum step). Under DDP a frozen step
    leaves them unused: wrap with find_unused_parameters=True while freezing.
    """

    def __init__(
        self,
        input_dim: int = 128,
        n_prototypes: int | list[int] = 3000,
        n_steps_frozen_prototypes: int = 0,
        *,
        cosine: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self._is_single_prototype = isinstance(n_prototypes, int)
        self.n_prototypes = [n_prototypes] if self._is_single_prototype else list(n_prototypes)
        if not self.n_prototypes or any(int(k) < 1 for k in self.n_prototypes):
            raise ValueError(f"n_prototypes must be >= 1 (or a non-empty list of them), got {n_prototypes!r}")
        # nn.Linear keeps lightly's parameter names (heads.<i>.weight) and init.
        self.heads = nn.ModuleList(nn.Linear(input_dim, int(k), bias=False) for k in self.n_prototypes)
        self.n_steps_frozen_prototypes = n_steps_frozen_prototypes
        self.cosine = cosine
        self.backend = backend

    def _frozen(self, step: int | None) -> bool:
        if self.n_steps_frozen_prototypes <= 0:
            return False
        if step is None:
            raise ValueError(
                "n_steps_frozen_prototypes is greater than 0: pass the current `step` to forward()"
            )
        return step < self.n_steps_frozen_prototypes

    @staticmethod
    def _operands(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The fused ops are not autocast-aware ops: cast their operands as autocast casts
        # a linear layer's, so mixed precision runs the op in the autocast dtype.
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            return x.to(dtype), weight.to(dtype)
        return x, weight.to(x.dtype)

    def _score(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x, weight = self._operands(x, weight)
        # The op takes (N, D); lightly's nn.Linear heads take any (..., D) (one crop's
        # (D,) vector, stacked (V, B, D) crops): score the flattened rows, keep the shape.
        rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
        out = prototype_scores(rows, weight, normalize=self.cosine, backend=self.backend)
        return out.reshape(*x.shape[:-1], weight.shape[0]) if x.dim() != 2 else out

    def forward(
        self, x: torch.Tensor, step: int | None = None, *, fused_loss: Callable | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of (..., D) embeddings, got {type(x).__name__}")
        if x.dim() == 0:
            raise ValueError("x must be a (..., D) tensor of embeddings, got a 0-d tensor")
        frozen = self._frozen(step)
        if fused_loss is not None:
            # Inside forward, where FSDP has gathered the weight and DDP sees it used.
            if not self._is_single_prototype:
                raise ValueError("fused_loss needs a single prototype head; this module has several")
            weight = self.heads[0].weight
            x, weight = self._operands(x, weight.detach() if frozen else weight)
            return fused_loss(x, weight, normalize=self.cosine)
        out = [self._score(x, head.weight.detach() if frozen else head.weight) for head in self.heads]
        return out[0] if self._is_single_prototype else out

    @torch.no_grad()
    def normalize(self) -> None:
        """Rescale every prototype row to unit L2 norm, in place (SwAV does it each step)."""
        for head in self.heads:
            head.weight.copy_(F.normalize(head.weight, dim=1))


class SwAVProjectionHead(nn.Module):
    """SwAV's MLP: (num_layers - 1) x [Linear, BatchNorm1d?, ReLU] then Linear.

    SwAV / lightly: SwAVProjectionHead(2048, 2048, 128) (2 layers, batch norm); SEER
    (RegNetY-256GF): SwAVProjectionHead(3712, 8192, 256, num_layers=3, batch_norm=False).
    Hidden linears drop their bias when batch norm follows (it cancels it), as lightly's,
    so a 2-layer head has lightly's state_dict keys.
    """

    def __init__(
        self,
        input_dim: int = 2048,
        hidden_dim: int = 2048,
        output_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-2], dims[1:-1], strict=True):
            layers.append(nn.Linear(d_in, d_out, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU())
        layers.append(nn.Linear(dims[-2], dims[-1]))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# ------------------------------------------------------------------------ queue


def _sync_filled(module: SwAVQueue, incompatible_keys) -> None:
    """After load_state_dict: refresh the host copy of the fill count from the buffer."""
    module._filled = int(module.filled)


class SwAVQueue(nn.Module):
    """SwAV's feature queue: detached embeddings of the assignment crops of past batches.

    Args:
        length: the queue length over all processes (SwAV's --queue_length).
        dim: embedding size D.
        n_crops: number of assignment crops A.
        global_batch: batch size per process times the number of processes; when given,
            `length` is first rounded down to a multiple of it, as SwAV does.
        world_size: processes sharing the queue length; each keeps length // world_size
            rows (SwAV's per-rank queue) and must then save its own state_dict.

    Use: each step, `queue.scores(prototypes, step)` (None until the queue is full: SwAV
    uses it only once full) gives (A, Q, K) scores with the current prototypes for the
    loss; then `queue.enqueue(embeddings)` pushes this batch's (A, B, D) embeddings. The
    newest rows are at the front (SwAV's layout); the oldest fall off the end. Keep the
    queue outside a DDP-wrapped module (or broadcast_buffers=False): ranks differ.
    """

    def __init__(
        self,
        length: int,
        dim: int,
        n_crops: int,
        *,
        global_batch: int | None = None,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if global_batch is not None:
            length = self.rounded_length(length, global_batch)
        if world_size < 1 or length % world_size:
            raise ValueError(f"length {length} must be a multiple of world_size {world_size}")
        rows = length // world_size
        if rows < 1 or dim < 1 or n_crops < 1:
            raise ValueError(
                f"need length // world_size >= 1, dim >= 1, n_crops >= 1; got {rows}, {dim}, {n_crops}"
            )
        self.register_buffer("queue", torch.zeros(n_crops, rows, dim))
        # Rows written so far (capped at the length). A buffer so it survives a resume;
        # a host copy so is_full needs no device sync.
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._filled = 0
        self.register_load_state_dict_post_hook(_sync_filled)

    @staticmethod
    def rounded_length(length: int, global_batch: int) -> int:
        """SwAV's rule: queue_length -= queue_length % (batch_size * world_size)."""
        if global_batch < 1:
            raise ValueError(f"global_batch must be >= 1, got {global_batch}")
        rounded = length - length % global_batch
        if rounded < 1:
            raise ValueError(f"queue length {length} is shorter than the global batch {global_batch}")
        return rounded

    @property
    def length(self) -> int:
        """Rows held by this process."""
        return self.queue.shape[1]

    @property
    def is_full(self) -> bool:
        return self._filled >= self.length

    @property
    def embeddings(self) -> torch.Tensor:
        """(n_crops, length, dim), newest first."""
        return self.queue

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Push (n_crops, B, dim) embeddings (detached); when B > length only the last
        `length` rows of the batch are kept."""
        if not isinstance(embeddings, torch.Tensor):
            embeddings = torch.stack(list(embeddings))
        n_crops, _, dim = self.queue.shape
        if embeddings.dim() != 3 or embeddings.shape[0] != n_crops or embeddings.shape[2] != dim:
            raise ValueError(
                f"embeddings must be (n_crops={n_crops}, B, dim={dim}), got shape {tuple(embeddings.shape)}"
            )
        new = embeddings.detach()[:, -self.length :]
        b = new.shape[1]
        if b < self.length:
            self.queue[:, b:] = self.queue[:, : self.length - b].clone()
        self.queue[:, :b] = new
        self._filled = min(self._filled + b, self.length)
        self.filled.fill_(self._filled)

    @torch.no_grad()
    def scores(self, prototypes: nn.Module, step: int | None = None):
        """Scores of the queued embeddings with the current prototypes: None until the
        queue is full, else (n_crops, length, K) (a list of them for several heads).
        `prototypes` is a SwAVPrototypes (called with `step`) or any module of x."""
        if not self.is_full:
            return None
        n_crops, rows, dim = self.queue.shape
        flat = self.queue.reshape(n_crops * rows, dim)
        out = prototypes(flat) if step is None else prototypes(flat, step)
        if isinstance(out, torch.Tensor):
            return out.reshape(n_crops, rows, -1)
        return [o.reshape(n_crops, rows, -1) for o in out]

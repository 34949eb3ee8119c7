"""Linear probe on frozen features: multinomial logistic regression fitted full-batch with L-BFGS.

The protocol (SEER / SwAV linear evaluation, shrunk to what fits a frozen-feature matrix):
features are standardized with statistics of the whole training split (no labels involved), a
linear softmax classifier is fitted on the labelled subset, and its weight decay is chosen from a
small sweep by stratified k-fold cross-validation on those same labels (a held-out part of the
training labels, never the test split). The chosen weight decay is then refitted on all labels.

Objective for one model: mean cross-entropy + weight_decay / 2 * ||W||^2 (bias not penalized),
which is scikit-learn's LogisticRegression with C = 1 / (weight_decay * n_samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass(frozen=True)
class Standardizer:
    """Per-feature affine map to zero mean and unit variance, fitted on training features."""

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, features: Tensor, eps: float = 1e-6) -> Standardizer:
        mean = features.mean(dim=0)
        std = features.std(dim=0, unbiased=False)
        # A feature constant on the training split carries no information; dividing by a tiny std
        # would turn test-time noise in it into huge values, so leave its scale alone.
        std = torch.where(std > eps, std, torch.ones_like(std))
        return cls(mean=mean, std=std)

    def __call__(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.std


@dataclass(frozen=True)
class LinearProbe:
    """A fitted linear classifier: logits = features @ weight + bias."""

    weight: Tensor  # (D, C)
    bias: Tensor  # (C,)
    weight_decay: float

    def logits(self, features: Tensor) -> Tensor:
        return features.to(self.weight.dtype) @ self.weight + self.bias

    def predict(self, features: Tensor) -> Tensor:
        return self.logits(features).argmax(dim=1)


@dataclass(frozen=True)
class ProbeResult:
    """The probe refitted with the selected weight decay, and the sweep that chose it."""

    probe: LinearProbe
    weight_decay: float
    cv_accuracy: dict[float, float]  # weight decay -> cross-validated accuracy on the training labels


@dataclass(frozen=True)
class RowSpace:
    """Mean of a feature matrix's rows, an orthonormal basis (D, r) of the span of the centred
    rows, and the singular values of the centred matrix.

    Three exact rewrites of the probe rest on it. (1) Centring: logits (x - mean) W + b' with
    b' = b + mean W are the same classifier with the same penalty, and the bias no longer has to
    track the mean of the features (it converged slowest of all parameters before). (2) The
    penalized optimum has W in the span of the centred training rows (a component outside leaves
    the loss unchanged and adds to the penalty), so W = V B with ||W|| = ||B||, and the problem in
    the r coordinates Z = (X - mean) V is the same problem; it is much smaller with fewer labels
    than dimensions (1% and 10% draws) or redundant features (raw pixels of upsampled digits: rank
    ~61 in 3072 dimensions). (3) The columns of Z are orthogonal with norms s_i, so scaling column
    i by 1 / sqrt(s_i^2 / n + weight_decay) gives the penalized problem a Hessian of order one in
    every direction it can see: L-BFGS needs tens of iterations where, on raw badly conditioned
    features (a random-init network), it needed hundreds.
    """

    mean: Tensor  # (D,)
    basis: Tensor  # (D, r), orthonormal columns
    singular: Tensor  # (r,)

    @classmethod
    def of(cls, features: Tensor, chunk_rows: int = 65536) -> RowSpace:
        n, d = features.shape
        mean = features.double().mean(dim=0)
        # Eigen-decompose the smaller Gram matrix, min(n, D)^2 entries (a full SVD of 1258 x 3072
        # pixels took five times longer here), in float64 since the Gram matrix squares the
        # condition number. With more rows than columns it is accumulated over row chunks, so a
        # float64 copy of a million-row feature matrix never exists.
        if n < d:
            x = features.double() - mean
            eigenvalues, left = torch.linalg.eigh(x @ x.T)
            singular = eigenvalues.clamp_min(0).sqrt()
            basis = x.T @ left / singular.clamp_min(torch.finfo(x.dtype).tiny)
        else:
            gram = features.new_zeros(d, d, dtype=torch.float64)
            for chunk in features.split(chunk_rows):
                centred = chunk.double() - mean
                gram += centred.T @ centred
            eigenvalues, basis = torch.linalg.eigh(gram)
            singular = eigenvalues.clamp_min(0).sqrt()
        # numpy.linalg.matrix_rank's tolerance at the features' own precision (directions below it
        # are rounding noise of the features), but no lower than the float64 Gram matrix resolves
        # (its eigenvalues carry errors of eps * the largest one, so singular values of sqrt(that)).
        size = max(n, d)
        relative = max(
            size * torch.finfo(features.dtype).eps, math.sqrt(size * torch.finfo(torch.float64).eps)
        )
        top = singular.max() if singular.numel() else singular.new_zeros(())
        keep = (singular > top * relative) & (singular > 0)
        dtype = features.dtype
        return cls(mean=mean.to(dtype), basis=basis[:, keep].to(dtype), singular=singular[keep].to(dtype))

    @property
    def rank(self) -> int:
        return int(self.singular.numel())

    def coords(self, features: Tensor) -> Tensor:
        """(N, r) coordinates of any rows (training, held-out or test) in this frame."""
        return (features - self.mean) @ self.basis

    def linear(self, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """(W, b) on the original features of the classifier coords(x) @ weight + bias."""
        full = self.basis @ weight
        return full, bias - self.mean @ full


# Up to this many parameters ((r + 1) x classes) a fit uses Newton's method: the Hessian is then
# at most 512^2 and costs less than a single L-BFGS line search's Python overhead; Newton needs
# ~8 steps where L-BFGS needed 50-200 (a 1% draw of the digits: 12 x 10 coordinates, ~10 times
# faster). Above it, forming and factorizing the Hessian would cost more than L-BFGS's iterations.
NEWTON_MAX_PARAMS = 512


def _objective(
    coords: Tensor, one_hot: Tensor, weight: Tensor, bias: Tensor, weight_decay: float
) -> tuple[Tensor, Tensor]:
    """(mean cross-entropy + weight_decay/2 ||weight||^2, log-probabilities)."""
    log_probs = (coords @ weight + bias).log_softmax(dim=1)
    loss = -(log_probs * one_hot).sum() / coords.shape[0] + 0.5 * weight_decay * weight.pow(2).sum()
    return loss, log_probs


def _solve(
    coords: Tensor,
    singular: Tensor,
    labels: Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int,
    tolerance: float,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """(B, b) minimizing mean CE(coords @ B + b) + weight_decay/2 ||B||^2, full batch.

    coords are RowSpace coordinates (orthogonal columns of norm `singular`). Both solvers stop when
    the largest gradient entry, in the preconditioned variable B' = B * sqrt(s^2/n + wd) (see
    RowSpace), is below `tolerance`. init (B, b) warm-starts the fit, e.g. from the previous weight
    decay of a sweep.
    """
    n, r = coords.shape
    if init is None:
        init = (coords.new_zeros(r, num_classes), coords.new_zeros(num_classes))
    scale = (singular.pow(2) / n + weight_decay).rsqrt()
    one_hot = F.one_hot(labels, num_classes).to(coords.dtype)
    if (r + 1) * num_classes <= NEWTON_MAX_PARAMS:
        return _newton(coords, one_hot, weight_decay, scale, max_iter, tolerance, init)
    return _lbfgs(coords, one_hot, weight_decay, scale, max_iter, tolerance, init)


def _lbfgs(
    coords: Tensor,
    one_hot: Tensor,
    weight_decay: float,
    scale: Tensor,
    max_iter: int,
    tolerance: float,
    init: tuple[Tensor, Tensor],
) -> tuple[Tensor, Tensor]:
    """L-BFGS (strong Wolfe) in the preconditioned variable B' = B / scale."""
    n = coords.shape[0]
    scaled = coords * scale
    penalty = weight_decay * scale.pow(2)[:, None]  # wd/2 ||scale * B'||^2 has gradient penalty * B'
    weight, bias = init[0] / scale[:, None], init[1].clone()
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=10,
        tolerance_grad=tolerance,
        # Changes of loss or step below a few ulps are rounding noise: stop there, not at max_iter.
        tolerance_change=10 * torch.finfo(coords.dtype).eps,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        # Loss and gradient written out (softmax minus one-hot): on the small problems of low-shot
        # draws the autograd bookkeeping would cost more than the arithmetic.
        log_probs = (scaled @ weight + bias).log_softmax(dim=1)
        loss = -(log_probs * one_hot).sum() / n + 0.5 * (penalty * weight.pow(2)).sum()
        residual = (log_probs.exp() - one_hot) / n
        weight.grad = scaled.T @ residual + penalty * weight
        bias.grad = residual.sum(dim=0)
        return loss

    optimizer.step(closure)
    return weight * scale[:, None], bias


def _newton(
    coords: Tensor,
    one_hot: Tensor,
    weight_decay: float,
    scale: Tensor,
    max_iter: int,
    tolerance: float,
    init: tuple[Tensor, Tensor],
) -> tuple[Tensor, Tensor]:
    """Newton's method with the exact Hessian and a backtracking (Armijo) line search."""
    n, r = coords.shape
    classes = one_hot.shape[1]
    weight, bias = init[0].clone(), init[1].clone()
    loss, log_probs = _objective(coords, one_hot, weight, bias, weight_decay)
    augmented = torch.cat([coords, coords.new_ones(n, 1)], dim=1)  # the bias as a last coordinate
    penalty = torch.diag(
        torch.cat([coords.new_full((r,), weight_decay), coords.new_zeros(1)]).repeat_interleave(classes)
    )
    for _ in range(max_iter):
        probs = log_probs.exp()
        residual = (probs - one_hot) / n
        grad_w = coords.T @ residual + weight_decay * weight
        grad_b = residual.sum(dim=0)
        if float(torch.cat([(grad_w / scale[:, None]).flatten(), grad_b]).abs().max()) <= tolerance:
            break
        # Softmax curvature per sample (diag p - p p^T) times z z^T, summed: ((r+1) C)^2 entries.
        curvature = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
        hessian = torch.einsum("nab,ni,nj->iajb", curvature, augmented, augmented) / n
        hessian = hessian.reshape((r + 1) * classes, (r + 1) * classes) + penalty
        # Damping of a billionth of the largest curvature (a thousand ulps in float32): adding one constant to every class's
        # bias changes nothing, and once the labels are fitted the softmax curvature vanishes, so
        # the bias block is singular; the gradient has no component along the null direction.
        damping = max(1e-9, 1e3 * torch.finfo(coords.dtype).eps) * float(hessian.diagonal().max())
        hessian.diagonal().add_(damping + torch.finfo(coords.dtype).tiny)
        grad = torch.cat([grad_w, grad_b[None]])
        step_dir = -torch.linalg.solve(hessian, grad.reshape(-1)).reshape(r + 1, classes)
        slope = float((grad * step_dir).sum())
        step = 1.0
        while True:  # backtracking: halve until the loss drops by a fair share of the slope
            new_weight, new_bias = weight + step * step_dir[:r], bias + step * step_dir[r]
            new_loss, new_log_probs = _objective(coords, one_hot, new_weight, new_bias, weight_decay)
            if float(new_loss) <= float(loss) + 1e-4 * step * slope or step < 1e-10:
                break
            step /= 2
        if step < 1e-10:  # no descent left at float64 resolution: converged as far as it can
            break
        weight, bias, loss, log_probs = new_weight, new_bias, new_loss, new_log_probs
    return weight, bias


def fit_softmax_regression(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 200,
    tolerance: float = 1e-6,
) -> LinearProbe:
    """Minimize mean cross-entropy + weight_decay/2 ||W||^2 (bias free) with full-batch L-BFGS.

    Strictly convex for weight_decay > 0, so the zero start only affects the time taken. max_iter
    bounds the cost when weight_decay is tiny and the data separable (the optimum then lies far
    out and is approached slowly); tolerance is on the largest preconditioned gradient entry.
    Give float64 features for weak weight decays: a nearly separable fit at weight decay 1e-4 has
    an objective of ~3e-4, and in float32 the solver stops on rounding noise with test accuracy
    five points short of the optimum's (measured on raw digit pixels, 10% of the labels).
    """
    if weight_decay <= 0:
        raise ValueError(f"weight decay must be positive, got {weight_decay}")
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"{features.shape[0]} feature rows but {labels.shape[0]} labels")
    space = RowSpace.of(features)
    weight, bias = _solve(
        space.coords(features), space.singular, labels, num_classes, weight_decay, max_iter, tolerance
    )
    weight, bias = space.linear(weight, bias)
    return LinearProbe(weight=weight, bias=bias, weight_decay=weight_decay)


def stratified_folds(labels: Tensor, folds: int, seed: int) -> np.ndarray:
    """Fold id per sample: each class shuffled, then dealt round-robin across folds.

    The deal continues from class to class, so classes with a single example land in different
    folds and the folds stay the same size (within one) even in the 1%-label regime.
    """
    y = labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    position = 0
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        fold_of[members] = (position + np.arange(len(members))) % folds
        position += len(members)
    return fold_of


def cross_validate(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    weight_decays: Sequence[float],
    folds: int,
    seed: int,
    max_iter: int = 200,
    tolerance: float = 1e-6,
    min_held_out: int = 200,
) -> dict[float, tuple[float, float]]:
    """Weight decay -> (accuracy, mean cross-entropy) on held-out folds of the labelled set.

    The held-out part is one fold (1/folds of the labels). While fewer than min_held_out labels
    have been scored, the next fold is held out in turn (k-fold cross-validation), so the choice
    rests on at least min_held_out predictions or on every label: a dozen low-shot labels are all
    used, while 100% of a large training set costs a single hold-out.

    Per fold, the RowSpace is computed once and the sweep runs from the strongest to the
    weakest weight decay, each fit starting from the previous optimum (a regularization path), which
    saves most of the iterations of the weakly regularized fits.
    """
    n = labels.shape[0]
    folds = min(folds, n)
    fold_of = torch.from_numpy(stratified_folds(labels, folds, seed)).to(labels.device)
    correct = dict.fromkeys(weight_decays, 0)
    log_loss = dict.fromkeys(weight_decays, 0.0)
    scored = 0
    for fold in range(folds):
        if scored >= min_held_out:
            break
        held_out = fold_of == fold
        train_x, train_y = features[~held_out], labels[~held_out]
        space = RowSpace.of(train_x)
        train_z, val_z, val_y = space.coords(train_x), space.coords(features[held_out]), labels[held_out]
        previous = None
        for wd in sorted(weight_decays, reverse=True):
            previous = _solve(
                train_z, space.singular, train_y, num_classes, wd, max_iter, tolerance, previous
            )
            logits = val_z @ previous[0] + previous[1]
            correct[wd] += int((logits.argmax(dim=1) == val_y).sum())
            log_loss[wd] += float(F.cross_entropy(logits, val_y, reduction="sum"))
        scored += int(held_out.sum())
    return {wd: (correct[wd] / scored, log_loss[wd] / scored) for wd in weight_decays}


def train_linear_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    folds: int = 5,
    seed: int = 0,
    max_iter: int = 200,
    min_held_out: int = 200,
) -> ProbeResult:
    """Choose the weight decay on held-out folds of the labels (see cross_validate), then refit on
    all of them.

    Selection: highest held-out accuracy; ties (common with a dozen labels) go to the lower
    held-out cross-entropy, i.e. the better calibrated model.
    """
    if not weight_decays:
        raise ValueError("the weight-decay sweep is empty")
    if labels.numel() < 2 or len(weight_decays) == 1:
        best = float(weight_decays[len(weight_decays) // 2])
        scores = {best: (math.nan, math.nan)}
    else:
        scores = cross_validate(
            features, labels, num_classes, weight_decays, folds, seed, max_iter, min_held_out=min_held_out
        )
        best = min(scores, key=lambda wd: (-scores[wd][0], scores[wd][1]))
    probe = fit_softmax_regression(features, labels, num_classes, best, max_iter=max_iter)
    return ProbeResult(probe=probe, weight_decay=best, cv_accuracy={wd: s[0] for wd, s in scores.items()})


def accuracy(predictions: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((predictions.cpu() == labels.cpu()).float().mean())

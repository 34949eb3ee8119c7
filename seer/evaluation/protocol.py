"""The evaluation protocol on one feature matrix: linear probe at each label fraction, and k-NN.

Every feature set of a run (SSL trunk, random-init baselines, raw pixels) is scored on the same
train/test split and the same label subsets: the subsets depend only on the training labels and
the seed, and are drawn once per run (LabelSubsets) before any feature is computed, so a bad
fraction fails before minutes of feature extraction.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from seer.evaluation.features import bar
from seer.evaluation.knn import knn_predict
from seer.evaluation.lowshot import draw_seeds, per_class_counts, sample_per_class
from seer.evaluation.probe import (
    DEFAULT_WEIGHT_DECAYS,
    RowSpace,
    Standardizer,
    accuracy,
    train_linear_probe,
)


@dataclass(frozen=True)
class Protocol:
    """Knobs of the protocol; the defaults are the ones docs/evaluation.md describes."""

    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    draws: int = 5  # label subsets per fraction below 1 (fraction 1 has a single, full subset)
    seed: int = 0
    knn_k: int = 20
    knn_temperature: float = 0.07
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS
    folds: int = 5  # the held-out part for the weight-decay choice is 1/folds of the labels ...
    min_held_out: int = 200  # ... and further folds are held out in turn until this many are scored
    max_iter: int = 200  # iterations per fit (L-BFGS; Newton needs ~8)

    def __post_init__(self) -> None:
        if not self.fractions:
            raise ValueError("at least one label fraction is needed")
        if self.draws < 1:
            raise ValueError(f"draws must be at least 1, got {self.draws}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")


@dataclass(frozen=True)
class LabelSubsets:
    """Per fraction, the training-set indices of each draw's labelled examples."""

    by_fraction: dict[float, list[Tensor]]

    @classmethod
    def draw(cls, train_labels: Tensor, class_names: Sequence[str], protocol: Protocol) -> LabelSubsets:
        by_fraction: dict[float, list[Tensor]] = {}
        for fraction in sorted(set(protocol.fractions)):
            counts = per_class_counts(train_labels, fraction, class_names)
            draws = 1 if fraction == 1.0 else protocol.draws
            by_fraction[fraction] = [
                sample_per_class(train_labels, counts, seed) for seed in draw_seeds(protocol.seed, draws)
            ]
        return cls(by_fraction=by_fraction)

    def num_labels(self, fraction: float) -> int:
        return int(self.by_fraction[fraction][0].numel())


@dataclass
class FractionScore:
    """Linear-probe top-1 (%) of each draw at one label fraction."""

    fraction: float
    labels: int
    accuracies: list[float]
    weight_decays: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        # Sample standard deviation over draws (n - 1): the spread a new draw would show.
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


@dataclass
class FeatureResult:
    """All scores of one feature set."""

    name: str
    dim: int
    probe: list[FractionScore] = field(default_factory=list)
    baseline: bool = False  # drawn dashed in the plot
    knn: float = float("nan")
    seconds: dict[str, float] = field(default_factory=dict)

    def score(self, fraction: float) -> FractionScore | None:
        return next((s for s in self.probe if s.fraction == fraction), None)


def evaluate_features(
    name: str,
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    subsets: LabelSubsets,
    protocol: Protocol,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> FeatureResult:
    """Linear probe at every fraction and draw, and k-NN with all training labels."""
    device = torch.device(device)
    result = FeatureResult(name=name, dim=int(train_features.shape[1]))

    start = time.perf_counter()
    # Statistics of the whole training split: no labels involved, so low-shot probes may use them,
    # and with a dozen labels they are far less noisy than statistics of the labelled subset.
    # float64 for the probe: weakly regularized fits have objectives far below float32's
    # resolution of a loss of order one (see fit_softmax_regression).
    train_64, test_64 = train_features.to(device, torch.float64), test_features.to(device, torch.float64)
    standardize = Standardizer.fit(train_64)
    train_x, test_x = standardize(train_64), standardize(test_64)
    # Exact shrink when the features span fewer dimensions than they have (raw pixels of upsampled
    # digits: rank ~61 in 3072): every probe's weights lie in the span of the training rows, so
    # each fit's own RowSpace then starts from r columns instead of D.
    space = RowSpace.of(train_x)
    if space.rank < train_x.shape[1]:
        train_x, test_x = space.coords(train_x), space.coords(test_x)
    train_y, test_y = train_labels.to(device), test_labels.to(device)
    jobs = [(f, i, idx) for f, draws in subsets.by_fraction.items() for i, idx in enumerate(draws)]
    scores = {f: FractionScore(f, subsets.num_labels(f), [], []) for f in subsets.by_fraction}
    for fraction, draw, indices in bar(jobs, f"{name}: probe", progress):
        indices = indices.to(device)
        fitted = train_linear_probe(
            train_x[indices],
            train_y[indices],
            num_classes,
            weight_decays=protocol.weight_decays,
            folds=protocol.folds,
            min_held_out=protocol.min_held_out,
            seed=protocol.seed + draw,
            max_iter=protocol.max_iter,
        )
        scores[fraction].accuracies.append(accuracy(fitted.probe.predict(test_x), test_y))
        scores[fraction].weight_decays.append(fitted.weight_decay)
    result.probe = [scores[f] for f in sorted(scores)]
    result.seconds["probe"] = time.perf_counter() - start

    start = time.perf_counter()
    predictions = knn_predict(
        train_features.to(device),
        train_y,
        test_features.to(device),
        num_classes,
        k=protocol.knn_k,
        temperature=protocol.knn_temperature,
    )
    result.knn = accuracy(predictions, test_y)
    result.seconds["knn"] = time.perf_counter() - start
    return result

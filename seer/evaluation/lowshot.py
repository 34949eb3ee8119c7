"""Low-shot label subsets: a fraction of the training labels, drawn per class with a fixed seed.

SEER's 1% / 10% ImageNet subsets keep the class proportions of the full training set. Here the
total, round(fraction * N), is shared out over the classes in proportion to their sizes by the
largest-remainder rule (so the total is exact and each class gets floor or ceil of its quota),
and then each class's examples are drawn without replacement from its own seeded permutation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


class LabelFractionError(ValueError):
    """The requested label fraction cannot give every class at least one example."""


def per_class_counts(labels: Tensor, fraction: float, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Number of labelled examples to draw from each class (index = class id) for this fraction.

    Raises LabelFractionError naming the starved classes when a class would get no example, since
    a probe can never predict a class it has not seen.
    """
    if not 0.0 < fraction <= 1.0:
        raise LabelFractionError(f"label fraction must be in (0, 1], got {fraction}")
    num_classes = len(class_names) if class_names is not None else 0
    sizes = np.bincount(labels.cpu().numpy(), minlength=num_classes)
    counts = _allocate(sizes, fraction)
    starved = np.flatnonzero(counts == 0)
    if starved.size:
        names = [class_names[c] if class_names is not None else str(c) for c in starved[:10]]
        more = f" and {starved.size - 10} more" if starved.size > 10 else ""
        raise LabelFractionError(
            f"label fraction {fraction:g} of {int(sizes.sum())} training images ({int(counts.sum())} "
            f"labels) leaves {starved.size} class(es) with no labelled example: {', '.join(names)}{more}. "
            f"The smallest class has {int(sizes.min())} training images; a fraction of at least "
            f"{1.0 / max(int(sizes.min()), 1):.4g} gives every class an example."
        )
    return counts


def _allocate(sizes: np.ndarray, fraction: float) -> np.ndarray:
    """Largest-remainder share of round(fraction * N) labels over classes of the given sizes."""
    total = int(round(fraction * sizes.sum()))
    quotas = fraction * sizes
    counts = np.floor(quotas).astype(np.int64)
    # Largest remainders first; the stable sort breaks ties by class id so the result is fixed.
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[: max(total - int(counts.sum()), 0)]] += 1
    return np.minimum(counts, sizes)


def sample_per_class(labels: Tensor, counts: Sequence[int] | np.ndarray, seed: int) -> Tensor:
    """Indices of exactly counts[c] examples of each class c, drawn without replacement.

    Reproducible: the same labels, counts and seed always give the same indices (numpy's PCG64
    stream is stable across versions and platforms). Returned sorted, so callers see a subset of
    the training set in its original order.
    """
    y = labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    chosen = []
    for cls, count in enumerate(counts):
        members = np.flatnonzero(y == cls)
        if count > len(members):
            raise LabelFractionError(f"class {cls} has {len(members)} examples, {count} requested")
        chosen.append(rng.permutation(members)[:count])
    return torch.from_numpy(np.sort(np.concatenate(chosen))).to(torch.long)


def draw_seeds(seed: int, draws: int) -> list[int]:
    """One seed per draw; draw i of a run with base seed s always uses the same subset."""
    return [seed * 1000 + i for i in range(draws)]

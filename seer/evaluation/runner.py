"""One evaluation run: the SSL trunk and its baselines through the same protocol on the same splits.

Feature sets, in table order:
  SSL trunk            the checkpoint's backbone, BatchNorm with its trained running statistics;
  random init          the same architecture freshly initialized (seeded), evaluated as it comes;
  random init, BN re-estimated
                       the very same random weights with BatchNorm statistics re-estimated on
                       the training images (the fair random baseline, see features.py);
  raw pixels           the normalized input image itself.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from seer.evaluation.data import EvalData
from seer.evaluation.features import RawPixels, extract_features, reestimate_batchnorm
from seer.evaluation.protocol import FeatureResult, LabelSubsets, Protocol, evaluate_features
from seer.evaluation.report import EvalReport

BASELINES = ("random", "random-bn", "pixels")
NAMES = {
    "ssl": "SSL trunk",
    "random": "random init",
    "random-bn": "random init, BN re-estimated",
    "pixels": "raw pixels",
}


@dataclass(frozen=True)
class Extraction:
    """How features are computed: batch size, device, loader workers, bf16 autocast on GPU."""

    batch_size: int = 256
    device: str = "cpu"
    num_workers: int = 0
    amp: bool = False
    progress: bool = True


def _log(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _trunks(
    trunk: nn.Module | None,
    random_trunk: Callable[[], nn.Module] | None,
    baselines: Sequence[str],
    data: EvalData,
    extraction: Extraction,
    seed: int,
) -> list[tuple[str, Callable[[], nn.Module]]]:
    """(key, builder) per feature set; builders are lazy so only one extra network lives at a time."""
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baseline(s) {sorted(unknown)}; choose from {list(BASELINES)}")
    if {"random", "random-bn"} & set(baselines) and random_trunk is None:
        raise ValueError("the random-init baselines need a way to build the architecture")
    trunks: list[tuple[str, Callable[[], nn.Module]]] = []
    if trunk is not None:
        trunks.append(("ssl", lambda: trunk))

    def fresh() -> nn.Module:
        # The same seed for both random baselines: they share weights and differ only in BN statistics.
        torch.manual_seed(seed)
        assert random_trunk is not None
        return random_trunk()

    def reestimated() -> nn.Module:
        model = fresh()
        reestimate_batchnorm(
            model,
            data.train,
            batch_size=extraction.batch_size,
            device=extraction.device,
            num_workers=extraction.num_workers,
            progress=extraction.progress,
        )
        return model

    builders = {"random": fresh, "random-bn": reestimated, "pixels": RawPixels}
    trunks += [(key, builders[key]) for key in BASELINES if key in baselines]
    return trunks


def run_evaluation(
    data: EvalData,
    protocol: Protocol,
    trunk: nn.Module | None,
    random_trunk: Callable[[], nn.Module] | None = None,
    baselines: Sequence[str] = BASELINES,
    extraction: Extraction = Extraction(),
    source: str = "",
    ssl_name: str = NAMES["ssl"],
) -> EvalReport:
    """Score the trunk and the requested baselines; nothing is written (see report.write_report)."""
    start = time.perf_counter()
    # Drawn first: a label fraction that starves a class fails before any feature is computed.
    subsets = LabelSubsets.draw(data.train_labels, data.class_names, protocol)
    results: list[FeatureResult] = []
    for key, build in _trunks(trunk, random_trunk, baselines, data, extraction, protocol.seed):
        name = ssl_name if key == "ssl" else NAMES[key]
        t0 = time.perf_counter()
        model = build()
        features = {}
        for split, dataset in (("train", data.train), ("test", data.test)):
            features[split], labels = extract_features(
                model,
                dataset,
                batch_size=extraction.batch_size,
                device=extraction.device,
                num_workers=extraction.num_workers,
                amp=extraction.amp,
                desc=f"{name}: {split} features",
                progress=extraction.progress,
            )
            expected = data.train_labels if split == "train" else data.test_labels
            if not torch.equal(labels, expected):  # a dataset whose order or labels drift
                raise RuntimeError(f"{split} split: the dataset's labels differ from EvalData's")
        seconds_features = time.perf_counter() - t0
        del model
        result = evaluate_features(
            name,
            features["train"],
            data.train_labels,
            features["test"],
            data.test_labels,
            data.num_classes,
            subsets,
            protocol,
            device=extraction.device,
            progress=extraction.progress,
        )
        result.seconds = {"features": seconds_features, **result.seconds}
        result.baseline = key != "ssl"
        results.append(result)
        scores = ", ".join(f"{s.fraction:g}: {s.mean:.1f}" for s in result.probe)
        _log(
            f"{name}: dim {result.dim}, probe {scores}, k-NN {result.knn:.1f} "
            f"({sum(result.seconds.values()):.1f} s)",
            extraction.progress,
        )
    return EvalReport(
        source=source,
        data=data.summary(),
        protocol=protocol,
        results=results,
        seconds=time.perf_counter() - start,
    )

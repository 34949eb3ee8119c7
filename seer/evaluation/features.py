"""Frozen-feature extraction from a trunk, BatchNorm re-estimation, and the raw-pixel "trunk".

Works with any nn.Module that maps (B, C, H, W) images to either (B, D) features (a timm model
built with num_classes=0 already pools) or a (B, D, h, w) map, which is globally average-pooled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


def bar(iterable, desc: str, progress: bool, **kwargs):
    """A tqdm bar over `iterable` when `progress` and stderr is a terminal (tqdm's
    disable=None): sent to a file, its carriage returns would make one endless line, and
    the per-set result lines already say what ran."""
    return tqdm(iterable, desc=desc, disable=None if progress else True, leave=False, **kwargs)


def pooled(output: Tensor) -> Tensor:
    """Global average pool a (B, D, h, w) map to (B, D); (B, D) passes through."""
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 2:
        return output
    raise ValueError(f"trunk output must be (B, D) or (B, D, h, w), got shape {tuple(output.shape)}")


def _loader(
    dataset: Dataset, batch_size: int, num_workers: int, device: torch.device, drop_last: bool = False
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
    )


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    # bf16 autocast only where it pays (GPU); the CPU path stays fp32 so results are reproducible.
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    amp: bool = False,
    desc: str = "features",
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """(features (N, D) float32 on the CPU, labels (N,)) for a dataset of (image, label) pairs.

    The model is put in eval mode (BatchNorm uses its running statistics) and left there.
    """
    device = torch.device(device)
    model.eval().to(device)
    features, labels = [], []
    batches = _loader(dataset, batch_size, num_workers, device)
    for images, targets in bar(batches, desc, progress, unit="batch"):
        images = images.to(device, non_blocking=True)
        with _autocast(device, amp):
            output = pooled(model(images))
        features.append(output.float().cpu())
        labels.append(torch.as_tensor(targets))
    if not features:
        raise ValueError("cannot extract features from an empty dataset")
    return torch.cat(features), torch.cat(labels).long()


def _batchnorms(model: nn.Module) -> Iterator[nn.modules.batchnorm._BatchNorm]:
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    desc: str = "BN statistics",
    progress: bool = True,
) -> int:
    """Replace every BatchNorm's running mean/var by their average over one pass of the dataset.

    A randomly initialized network evaluated with its initial running statistics (mean 0, var 1)
    normalizes nothing: activations drift in scale layer after layer and the pooled features are
    poorly conditioned. Re-estimating the statistics on the training images (no labels, no
    gradients, weights untouched) is the fair random-init baseline; on digits it moves the probe
    by 10-30 points. Returns the number of BatchNorm layers updated.
    """
    device = torch.device(device)
    model.eval().to(device)
    layers = list(_batchnorms(model))
    saved_momentum = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
        bn.train()  # only the BatchNorms: dropout / drop-path stay in eval mode
    # A last batch of one image cannot give batch statistics (BatchNorm raises on it); with a
    # cumulative average, dropping the ragged tail costs nothing measurable.
    drop_last = len(dataset) > batch_size  # type: ignore[arg-type]
    batches = _loader(dataset, batch_size, num_workers, device, drop_last=drop_last)
    try:
        for images, _ in bar(batches, desc, progress, unit="batch"):
            model(images.to(device, non_blocking=True))
    finally:
        for bn, momentum in zip(layers, saved_momentum, strict=True):
            bn.momentum = momentum
        model.eval()
    return len(layers)


class RawPixels(nn.Module):
    """The raw-pixel baseline as a "trunk": the image, area-downsampled to at most max_side, flattened.

    Digits at 32 px stay at their full 3x32x32 (which holds exactly the information of the 8x8
    original); larger images are shrunk so the feature matrix stays small.
    """

    def __init__(self, max_side: int = 32) -> None:
        super().__init__()
        self.max_side = max_side

    def forward(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        if max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            images = F.interpolate(images, size=size, mode="area")
        return images.flatten(1)

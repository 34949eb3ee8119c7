"""Optimizer (timm's LARS, SGD or AdamW; optionally ZeRO-sharded) and the per-iteration
linear-warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import torch
from timm.optim import Lars
from torch import nn

from seer.config import OptimizerConfig


@dataclass
class Schedule:
    """lr(step): linear from warmup_start_lr to peak_lr over warmup_steps, then cosine
    down to final_lr at total_steps (SwAV/SEER update it every iteration)."""

    total_steps: int
    warmup_steps: int
    peak_lr: float
    warmup_start_lr: float
    final_lr: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start_lr + (self.peak_lr - self.warmup_start_lr) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.final_lr + 0.5 * (self.peak_lr - self.final_lr) * (1 + math.cos(math.pi * progress))

    def state_dict(self) -> dict:
        return asdict(self)


def build_schedule(
    cfg: OptimizerConfig, total_steps: int, steps_per_epoch: int, global_batch: int
) -> Schedule:
    scale = global_batch / 256 if cfg.lr_batch_scaling else 1.0
    warmup = cfg.warmup_steps + round(cfg.warmup_epochs * steps_per_epoch)
    return Schedule(
        total_steps=total_steps,
        warmup_steps=min(warmup, total_steps),
        peak_lr=cfg.lr * scale,
        warmup_start_lr=cfg.warmup_start_lr * scale,
        final_lr=cfg.final_lr * scale,
    )


def _optimizer_class(cfg: OptimizerConfig) -> tuple[type[torch.optim.Optimizer], dict]:
    if cfg.name == "lars":
        return Lars, dict(
            momentum=cfg.momentum, weight_decay=cfg.weight_decay, trust_coeff=cfg.trust_coefficient
        )
    if cfg.name == "sgd":
        return torch.optim.SGD, dict(momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW, dict(weight_decay=cfg.weight_decay)


def build_optimizer(cfg: OptimizerConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """One parameter group for every parameter (SwAV/SEER regularize and adapt BN and
    biases too). Build it after DDP/FSDP wrapping: FSDP2 replaces the parameters."""
    cls, kwargs = _optimizer_class(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.sharded and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        # One process: nothing to shard over (the SEER configs ask for it and must still
        # run on a single GPU for a try).
        warnings.warn(
            "optimizer.sharded needs torch.distributed (torchrun); using the plain optimizer", stacklevel=2
        )
    elif cfg.sharded:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(params, optimizer_class=cls, lr=lr, **kwargs)
    return cls(params, lr=lr, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

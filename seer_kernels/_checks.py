"""Argument checks shared by every backend: done once, at the front door, so bad input
gets the same ValueError/TypeError, naming the argument, whatever runs underneath."""

from __future__ import annotations

import math
import numbers

import torch


def tensor(name: str, value, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D {layout} tensor, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def nonempty(name: str, value: torch.Tensor, layout: str) -> None:
    if value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got {layout} shape {tuple(value.shape)}")


def same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"tensors must be on one device, got {listed}")


def positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return int(value)


def finite(name: str, value: torch.Tensor) -> None:
    """Opt-in check (it syncs with the device): NaN/Inf in `value` is an error."""
    if not bool(torch.isfinite(value).all()):
        bad = (~torch.isfinite(value)).sum().item()
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")


def sinkhorn_args(scores, epsilon, iterations) -> tuple[float, int]:
    # (B, K), or (A, B, K): A crops, each its own problem.
    ndim = scores.dim() if isinstance(scores, torch.Tensor) and scores.dim() in (2, 3) else 2
    layout = "(B, K)" if ndim == 2 else "(A, B, K)"
    tensor("scores", scores, ndim, "(B, K) or 3-D (A, B, K)" if ndim == 2 else layout)
    nonempty("scores", scores, layout)
    return positive("epsilon", epsilon), count("iterations", iterations)


def prototype_scores_args(embeddings, prototypes) -> None:
    tensor("embeddings", embeddings, 2, "(N, D)")
    tensor("prototypes", prototypes, 2, "(K, D)")
    same_device(embeddings=embeddings, prototypes=prototypes)
    if embeddings.shape[1] != prototypes.shape[1]:
        raise ValueError(
            "embeddings and prototypes must have the same feature size D, got "
            f"embeddings {tuple(embeddings.shape)} and prototypes {tuple(prototypes.shape)}"
        )
    if embeddings.shape[1] == 0:
        raise ValueError(f"embeddings must have D >= 1 features, got shape {tuple(embeddings.shape)}")


def swav_cross_entropy_args(scores, codes, temperature) -> float:
    tensor("scores", scores, 3, "(V, B, K)")
    tensor("codes", codes, 3, "(A, B, K)")
    same_device(scores=scores, codes=codes)
    v, b, k = scores.shape
    a = codes.shape[0]
    if v < 2:
        raise ValueError(f"scores must hold V >= 2 crops, got V={v} (shape {tuple(scores.shape)})")
    if not 1 <= a <= v:
        raise ValueError(
            f"codes must hold 1 <= A <= V assignment crops, got A={a} with V={v} "
            f"(codes {tuple(codes.shape)}, scores {tuple(scores.shape)})"
        )
    if codes.shape[1:] != scores.shape[1:]:
        raise ValueError(
            "codes (A, B, K) must match scores (V, B, K) in B and K, got "
            f"codes {tuple(codes.shape)} and scores {tuple(scores.shape)}"
        )
    if b == 0 or k == 0:
        raise ValueError(f"scores must not be empty, got shape {tuple(scores.shape)}")
    return positive("temperature", temperature)


def prototype_cross_entropy_args(embeddings, prototypes, codes, temperature, normalize) -> float:
    tensor("embeddings", embeddings, 3, "(V, B, D)")
    tensor("prototypes", prototypes, 2, "(K, D)")
    tensor("codes", codes, 3, "(A, B, K)")
    same_device(embeddings=embeddings, prototypes=prototypes, codes=codes)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    v, b, d = embeddings.shape
    k = prototypes.shape[0]
    a = codes.shape[0]
    if v < 2:
        raise ValueError(f"embeddings must hold V >= 2 crops, got V={v} (shape {tuple(embeddings.shape)})")
    if prototypes.shape[1] != d:
        raise ValueError(
            "embeddings and prototypes must have the same feature size D, got "
            f"embeddings {tuple(embeddings.shape)} and prototypes {tuple(prototypes.shape)}"
        )
    if not 1 <= a <= v:
        raise ValueError(
            f"codes must hold 1 <= A <= V assignment crops, got A={a} with V={v} "
            f"(codes {tuple(codes.shape)}, embeddings {tuple(embeddings.shape)})"
        )
    if codes.shape[1:] != (b, k):
        raise ValueError(
            f"codes must be (A, B, K) = (A, {b}, {k}) for embeddings {tuple(embeddings.shape)} and "
            f"prototypes {tuple(prototypes.shape)}, got codes {tuple(codes.shape)}"
        )
    if b == 0 or d == 0 or k == 0:
        raise ValueError(
            f"embeddings and prototypes must not be empty, got embeddings {tuple(embeddings.shape)} "
            f"and prototypes {tuple(prototypes.shape)}"
        )
    return positive("temperature", temperature)

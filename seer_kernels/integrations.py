"""Swap the fused SwAV pieces into trainers people already run, in place.

    import seer_kernels.integrations as ski
    ski.patch_lightly()      # lightly's sinkhorn and SwaVLoss -> ours
    ski.patch_solo_learn()   # solo-learn's swav_loss_func and SinkhornKnopp -> ours

Each patch replaces the library's object in every already-imported module of that
library that refers to it (e.g. both `lightly.loss.swav_loss.SwaVLoss` and the
re-export `lightly.loss.SwaVLoss`), so code that looks the name up through the library
afterwards gets ours. A name a user module bound before the patch (`from lightly.loss
import SwaVLoss` at its top) keeps the original: patch first, or import after.
Each returns the "module.name" places it changed (empty when nothing was left to
patch), and warns and returns [] when the library cannot be imported. `unpatch_*`
restores the originals. lightly and solo-learn are optional: nothing here imports
them unless asked to.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

import torch
import torch.distributed as dist
from torch import nn

from seer_kernels.ops.sinkhorn import sinkhorn
from seer_kernels.ops.swav_cross_entropy import swav_cross_entropy
from seer_kernels.swav import SwAVLoss, SwAVPrototypes, gather_group

__all__ = [
    "SoloSinkhornKnopp",
    "lightly_sinkhorn",
    "patch_lightly",
    "patch_solo_learn",
    "solo_swav_loss_func",
    "unpatch_lightly",
    "unpatch_solo_learn",
]

# Where the originals are kept: on the library module that defines them, so a second
# patch never records our replacement as "original" and this module keeps no state.
_ORIGINALS = "_seer_kernels_originals"


# ------------------------------------------------------------------------ adapters


def lightly_sinkhorn(
    out: torch.Tensor,
    iterations: int = 3,
    epsilon: float = 0.05,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """lightly.loss.swav_loss.sinkhorn's signature (note: iterations before epsilon) on
    the fused Sinkhorn. Returns the codes in `out`'s dtype, as lightly does."""
    codes = sinkhorn(
        out, epsilon=epsilon, iterations=iterations, process_group=gather_group(gather_distributed)
    )
    return codes.to(out.dtype)


class SoloSinkhornKnopp(nn.Module):
    """solo-learn's `solo.utils.sinkhorn_knopp.SinkhornKnopp` on the fused Sinkhorn.

    Like solo-learn it reduces over the default group whenever torch.distributed is
    initialized. solo-learn scales by B = rows x `world_size` (the constructor's value,
    not the group's size); each round ends with a column normalization, so B cancels
    from the codes unless `num_iters` is 0, where they are the exp-scores over their
    total times B. Ours matches both when every rank holds as many rows (solo-learn's
    layout): with 0 rounds it rescales the fused op's true global row count to B."""

    def __init__(self, num_iters: int = 3, epsilon: float = 0.05, world_size: int = 1) -> None:
        super().__init__()
        self.num_iters = num_iters
        self.epsilon = epsilon
        self.world_size = world_size

    @torch.no_grad()
    def forward(self, Q: torch.Tensor) -> torch.Tensor:  # noqa: N803 (solo-learn's name)
        group_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        group = "world" if group_size > 1 else None
        codes = sinkhorn(Q, epsilon=self.epsilon, iterations=self.num_iters, process_group=group)
        if self.num_iters == 0 and self.world_size != group_size:
            codes = codes * (self.world_size / group_size)
        return codes.to(Q.dtype)


def solo_swav_loss_func(
    preds: Sequence[torch.Tensor] | torch.Tensor,
    assignments: Sequence[torch.Tensor] | torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """solo-learn's `swav_loss_func`: assignment i (the codes of crop i; solo-learn's
    multi-crop methods give them for the large crops only, the first A of the V
    predictions) predicts every other crop v != i; the mean over the A (V - 1) pairs,
    as one fused cross-entropy. Lists of (B, K) tensors or stacked (V, B, K) / (A, B, K).

    Raises ValueError where solo-learn raises (A > V: IndexError) or divides by zero
    pairs (V = 1 or A = 0: ZeroDivisionError). The loss is float32 (float64 for
    float64 predictions) and the assignments get no gradient (solo-learn computes them
    under no_grad)."""
    n_crops, n_assign = len(preds), len(assignments)
    if n_crops < 2:
        raise ValueError(f"preds must hold at least 2 crops (one pair to predict), got {n_crops}")
    if not 1 <= n_assign <= n_crops:
        raise ValueError(
            f"assignments must hold 1 to len(preds)={n_crops} tensors (the first crops' codes), got {n_assign}"
        )
    return swav_cross_entropy(torch.stack(list(preds)), torch.stack(list(assignments)), temperature)


# ------------------------------------------------------------------------ mechanics


def _import(names: list[str]) -> tuple[list[ModuleType], str | None]:
    try:
        return [importlib.import_module(n) for n in names], None
    except Exception as exc:  # a broken optional install is "absent", whatever it raises
        return [], f"{type(exc).__name__}: {exc}"


def _library_modules(root: str) -> list[tuple[str, ModuleType]]:
    return [
        (name, mod)
        for name, mod in list(sys.modules.items())
        if isinstance(mod, ModuleType) and (name == root or name.startswith(root + "."))
    ]


def _patch(root: str, home: ModuleType, replacements: dict[str, object]) -> list[str]:
    """Point every `root.*` module attribute that is the original of a name in
    `replacements` (the object `home.<name>` had before any patch) at the replacement."""
    originals = home.__dict__.setdefault(_ORIGINALS, {})
    for name in replacements:
        originals.setdefault(name, getattr(home, name))
    patched = []
    for mod_name, mod in _library_modules(root):
        for name, new in replacements.items():
            if mod.__dict__.get(name) is originals[name]:
                setattr(mod, name, new)
                patched.append(f"{mod_name}.{name}")
    return sorted(patched)


def _unpatch(root: str, homes: list[ModuleType]) -> list[str]:
    restored = []
    for home in homes:
        originals = home.__dict__.pop(_ORIGINALS, {})
        for mod_name, mod in _library_modules(root):
            for name, original in originals.items():
                current = mod.__dict__.get(name)
                if current is not None and current is not original and _is_ours(current):
                    setattr(mod, name, original)
                    restored.append(f"{mod_name}.{name}")
    return restored


def _is_ours(obj: object) -> bool:
    return getattr(obj, "__module__", "").startswith("seer_kernels")


def _absent(library: str, reason: str) -> list[str]:
    warnings.warn(f"{library} is not importable ({reason}); nothing was patched", stacklevel=3)
    return []


# ------------------------------------------------------------------------ lightly

_LIGHTLY = ["lightly.loss.swav_loss", "lightly.loss"]
_LIGHTLY_HEADS = ["lightly.models.modules.heads", "lightly.models.modules"]


def patch_lightly(*, loss: bool = True, prototypes: bool = False) -> list[str]:
    """Replace lightly's `sinkhorn` and `SwaVLoss` (and, with prototypes=True, its
    `SwaVPrototypes`: bias-free and cosine-scored, see seer_kernels.swav) with ours in
    every imported lightly module. Returns the "module.name" places patched."""
    patched: list[str] = []
    if loss:
        mods, err = _import(_LIGHTLY)
        if err:
            return _absent("lightly", err)
        patched += _patch("lightly", mods[0], {"sinkhorn": lightly_sinkhorn, "SwaVLoss": SwAVLoss})
    if prototypes:
        mods, err = _import(_LIGHTLY_HEADS)
        if err:
            return _absent("lightly", err)
        patched += _patch("lightly", mods[0], {"SwaVPrototypes": SwAVPrototypes})
    return sorted(patched)


def unpatch_lightly() -> list[str]:
    """Undo patch_lightly; returns the places restored."""
    homes = [sys.modules[n] for n in (_LIGHTLY[0], _LIGHTLY_HEADS[0]) if n in sys.modules]
    return _unpatch("lightly", homes)


# ------------------------------------------------------------------------ solo-learn

_SOLO_LOSS = "solo.losses.swav"
_SOLO_SINKHORN = "solo.utils.sinkhorn_knopp"


def patch_solo_learn() -> list[str]:
    """Replace solo-learn's `swav_loss_func` and `SinkhornKnopp` with ours in every
    imported solo module (solo.losses.swav, solo.losses, solo.methods.swav, ...).
    SinkhornKnopp modules already built keep the original class: patch before the
    trainer's `on_train_start`."""
    mods, err = _import([_SOLO_LOSS, _SOLO_SINKHORN])
    if err:
        return _absent("solo-learn", err)
    # solo.methods.swav binds both names at import; import it so the patch reaches it.
    _import(["solo.methods.swav"])
    patched = _patch("solo", mods[0], {"swav_loss_func": solo_swav_loss_func})
    return sorted(patched + _patch("solo", mods[1], {"SinkhornKnopp": SoloSinkhornKnopp}))


def unpatch_solo_learn() -> list[str]:
    homes = [sys.modules[n] for n in (_SOLO_LOSS, _SOLO_SINKHORN) if n in sys.modules]
    return _unpatch("solo", homes)

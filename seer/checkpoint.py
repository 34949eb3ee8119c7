"""Checkpoints: atomic, complete, resumable; and the exported backbone.

A training checkpoint is one file, `<run_dir>/checkpoints/step_<step:08d>.pt`, written by
rank 0 to a temporary name, fsynced, then renamed, so a crash at any moment leaves either
the previous complete file or the new complete file, never a partial one. The last
`train.keep_last` are kept. Its contents (a dict, loadable with weights_only=True):

    format        "seer-checkpoint"; version 1
    step          optimizer steps done (the schedule position)
    epoch, batch  the data position: the next batch to read is batch `batch` of `epoch`
    config        the resolved Config as a dict (seer.config.to_dict)
    arch          config["model"]["arch"], for a quick look
    model         full (unsharded) state dict: backbone.*, head.*, prototypes.*
    optimizer     full optimizer state (FSDP: by parameter name; ZeRO: consolidated)
    scaler        GradScaler state or None
    schedule      the learning-rate schedule parameters (the lr is a function of step)
    ranks         one dict per rank: queue (SwAVQueue state or None) and rng (torch CPU,
                  CUDA, numpy, python and the augmentation generator)
    world_size    ranks that wrote it
    counters      images_seen, skipped_images, nonfinite_steps
    last_loss     mean loss of the last logged steps

The exported backbone is a plain timm state dict (`backbone.pt`) that
`timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file="backbone.pt"),
num_classes=0, **timm_kwargs)` loads, plus `backbone.json` with arch, timm_kwargs and the
training config. `load_backbone(path)` reads either kind of file.

    python -m seer.checkpoint export runs/default/checkpoints/step_00000420.pt out/backbone.pt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seer.models import build_backbone, timm_name

FORMAT = "seer-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary files are ignored)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to `path` so that readers only ever see a complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    # Make the rename itself durable.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints and leftover temporary files."""
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    for tmp in checkpoint_dir(run_dir).glob(".step_*.tmp*"):
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint as a dict (CPU tensors); ValueError if it is not one."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT):
        raise ValueError(f"{path} is not a seer training checkpoint (no format={FORMAT!r} entry)")
    if obj.get("version", 0) > VERSION:
        raise ValueError(f"{path} has checkpoint version {obj['version']}; this seer reads <= {VERSION}")
    return obj


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint of a run that loads, with its contents; an unreadable one
    (which atomic writes should make impossible, but disks fail) is warned about and the
    previous one is used."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except Exception as exc:  # any failure to read means: try the previous one
            warnings.warn(
                f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); trying an older one",
                stacklevel=2,
            )
    return None


# ------------------------------------------------------------------------ backbone


def backbone_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk's entries of a SwAVModel state dict, with timm's own names."""
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}


def export_backbone(checkpoint: dict, out: str | Path) -> Path:
    """Write the trunk of a checkpoint as a timm state dict and its sidecar JSON."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(backbone_state(checkpoint["model"]), out)
    arch, kwargs = timm_name(
        checkpoint["config"]["model"]["arch"], checkpoint["config"]["model"]["timm_kwargs"]
    )
    meta = {
        "format": "seer-backbone",
        "arch": arch,
        "timm_kwargs": kwargs,
        "step": checkpoint["step"],
        "config": checkpoint["config"],
        "load_with": (
            f"timm.create_model({arch!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file={str(out)!r}), num_classes=0"
            + "".join(f", {k}={v!r}" for k, v in kwargs.items())
            + ")"
        ),
    }
    sidecar(out).write_text(json.dumps(meta, indent=2))
    return out


def sidecar(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def _read_any(path: Path, arch: str | None) -> tuple[dict, str, dict, dict]:
    """(trunk state dict, arch, timm kwargs, config) of a checkpoint or an export; a bare
    state dict without sidecar is taken to be of `arch`."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint or backbone file at {str(path)!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable torch file: {type(exc).__name__}: {exc}") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        cfg = obj["config"]
        return backbone_state(obj["model"]), cfg["model"]["arch"], cfg["model"]["timm_kwargs"], cfg
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        meta_path = sidecar(path)
        if not meta_path.is_file() and arch is not None:
            return obj, arch, {}, {}
        if not meta_path.is_file():
            raise ValueError(
                f"{path} is a bare state dict without {meta_path.name} next to it: the architecture is "
                f"unknown; pass arch= (and the timm kwargs it was built with) to load_backbone"
            )
        meta = json.loads(meta_path.read_text())
        return obj, meta["arch"], meta.get("timm_kwargs", {}), meta.get("config", {})
    raise ValueError(f"{path} is neither a seer training checkpoint nor a backbone state dict")


def load_backbone(
    path: str | Path, arch: str | None = None, **timm_kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained trunk of a training checkpoint or of an exported backbone, as a timm
    model with num_classes=0 (pooled features) in eval mode, and the training config dict
    ({} when unknown).

    `arch` (optional) is the architecture the caller expects: a file holding another one
    is a ValueError naming both. For a bare state dict without its sidecar JSON, `arch`
    and `timm_kwargs` say what to build. A state dict that does not fit the architecture
    is a ValueError listing the mismatching keys."""
    path = Path(path)
    state, file_arch, file_kwargs, config = _read_any(path, arch)
    if arch is not None and arch != file_arch:
        raise ValueError(f"{path} holds a {file_arch!r} backbone, not the requested {arch!r}")
    kwargs = {**file_kwargs, **timm_kwargs}
    model = build_backbone(file_arch, **kwargs)
    _load_strict(model, state, f"{path} ({file_arch}, {kwargs})")
    return model.eval(), config


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"the weights of {what} do not match the architecture: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(shapes)} of another shape (e.g. {shapes[:3]})"
        )
    model.load_state_dict(state)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m seer.checkpoint", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write the backbone of a checkpoint as a timm state dict")
    exp.add_argument("checkpoint", help="a checkpoint file, or a run folder (its newest checkpoint)")
    exp.add_argument("out", help="output .pt file (a .json sidecar is written next to it)")
    args = parser.parse_args(argv)
    src = Path(args.checkpoint)
    if src.is_dir():
        found = latest_checkpoint(src)
        if found is None:
            raise SystemExit(f"no checkpoint under {src / 'checkpoints'}")
        src, ckpt = found
    else:
        ckpt = load_checkpoint(src)
    out = export_backbone(ckpt, args.out)
    print(f"exported the backbone of {src} (step {ckpt['step']}) to {out}")
    print(json.loads(sidecar(out).read_text())["load_with"])


if __name__ == "__main__":
    main()

"""Typed training configuration: dataclasses, loaded from YAML and overridden by `key=value`.

One level of sections (model, swav, data, augment, optimizer, train) under a few top-level
keys, so every setting has one dotted name (`optimizer.sharded`, `train.batch_size`) that
works the same in a YAML file and on the command line. The dataclass defaults ARE the tiny
CPU default run on the embedded digits (configs/default.yaml spells them out).

    cfg = load_config("configs/seer_regnety_32gf.yaml", ["train.batch_size=16"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad configuration: unknown key, wrong type, invalid value or missing file."""


@dataclass
class ModelConfig:
    # A timm RegNet/RegNetY name; the SEER sizes are regnety_320 ... regnety_2560.
    arch: str = "regnetx_002"
    # Extra timm.create_model keyword arguments, overlaid on timm's RegNetCfg. The tiny
    # default needs downsample="avg": with timm's strided 1x1 shortcuts and zero-init of
    # the last BN, a 32 px input reaches the features through almost no path and the
    # SwAV loss sits at ln K (measured; see issue 6).
    timm_kwargs: dict[str, Any] = field(default_factory=lambda: {"downsample": "avg"})
    head_hidden_dim: int = 512
    head_output_dim: int = 128
    # Linear layers of the projection head (SwAV 2, SEER 3).
    head_layers: int = 2
    head_batch_norm: bool = True
    n_prototypes: int = 64


@dataclass
class SwAVConfig:
    temperature: float = 0.2  # the demo recipe study (docs/demo-recipe.md); SwAV used 0.1 at ImageNet scale
    sinkhorn_iterations: int = 3
    sinkhorn_epsilon: float = 0.05
    # Per-rank queue of past high-resolution embeddings (0 = no queue); it starts filling
    # at queue_start_epoch and joins the Sinkhorn once full.
    queue_length: int = 0
    queue_start_epoch: int = 15
    # Prototypes receive no update for the first N optimizer steps (SwAV: one epoch).
    freeze_prototypes_steps: int = 100
    # seer_kernels backend of the SwAV ops: "" picks the fastest available; naming one of
    # seer_kernels._registry.BACKENDS forces it (e.g. reference, to compare).
    backend: str = ""
    # The head's loss: "fused" computes it from the embeddings with
    # seer_kernels.prototype_cross_entropy, never holding the scores of all crops;
    # "composed" scores every crop with prototype_scores, then swav_cross_entropy; "auto"
    # is fused where the fused op's default backend on the device is a fused one (cpu on
    # the CPU) and composed on CUDA, until a GPU has measured the fused op's kernels.
    head: Literal["auto", "fused", "composed"] = "auto"


@dataclass
class DataConfig:
    # synthetic: random images made on the training device (no files, no decoding), to
    # measure the device's side of a run alone.
    source: Literal["digits", "folder", "webdataset", "synthetic"] = "digits"
    # Folder: a directory searched recursively. WebDataset: a shard path, a brace pattern
    # (data/shard-{000000..000999}.tar) or several of them separated by commas.
    path: str = ""
    # Side of the square image every sample is decoded to (shorter side resized, centre
    # crop) before the batched multi-crop augmentation; keep it near the global crop size.
    image_size: int = 32
    # Samples per epoch over all ranks: WebDataset (required: streams have no length) and
    # synthetic (0: ImageNet-1k's 1,281,167).
    epoch_size: int = 0
    num_workers: int = 0
    # Consecutive unreadable samples tolerated before the source is declared unusable.
    max_consecutive_failures: int = 100


@dataclass
class AugmentConfig:
    global_crops: int = 2
    global_size: int = 32
    global_scale: list[float] = field(default_factory=lambda: [0.3, 1.0])
    local_crops: int = 4
    local_size: int = 16
    local_scale: list[float] = field(default_factory=lambda: [0.1, 0.3])
    # Random resized crops: candidate (area, aspect) draws per crop before falling back to
    # the whole image; torchvision's RandomResizedCrop makes 10. The digits recipe keeps 1,
    # the draws its measured results were made with.
    crop_attempts: int = 1
    flip: float = 0.0
    # Probability of colour jitter; its strength s gives brightness/contrast/saturation
    # 0.8 s and hue 0.2 s, applied in a random order per crop (SwAV's get_color_distortion,
    # torchvision's ColorJitter).
    color_jitter: float = 0.0
    color_strength: float = 1.0
    grayscale: float = 0.0
    blur: float = 0.0
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    # Small affine jitter (degrees, degrees, fraction of the crop), used for the digits.
    rotation: float = 10.0
    shear: float = 10.0
    translate: float = 0.05
    # The digits' statistics at 32 px, as configs/default.yaml (photos: ImageNet's).
    mean: list[float] = field(default_factory=lambda: [0.305, 0.305, 0.305])
    std: list[float] = field(default_factory=lambda: [0.324, 0.324, 0.324])


@dataclass
class OptimizerConfig:
    name: Literal["lars", "sgd", "adamw"] = "adamw"
    # Peak learning rate, reached after the warmup; cosine decay to final_lr. With
    # lr_batch_scaling the three values are per 256 images and scaled by global batch / 256.
    lr: float = 2e-3
    warmup_start_lr: float = 0.0
    final_lr: float = 0.0
    lr_batch_scaling: bool = False
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    weight_decay: float = 1e-4
    momentum: float = 0.9
    # LARS trust coefficient (SwAV/SEER 0.001).
    trust_coefficient: float = 0.001
    # ZeroRedundancyOptimizer: optimizer state sharded over the ranks (SEER's sharded
    # optimizer); DDP only, FSDP shards it already.
    sharded: bool = False
    grad_clip: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 30
    # Per-rank batch; the global batch is batch_size * world size.
    batch_size: int = 128
    # >0: the schedule is exactly max_steps optimizer steps (overrides epochs).
    max_steps: int = 0
    # >0: stop (with a checkpoint) after this step without changing the schedule;
    # for time-limited jobs and the resume test.
    stop_at_step: int = 0
    # auto: bf16 autocast on GPU, fp32 on CPU. fp16 adds a GradScaler.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    grad_checkpointing: bool = False
    # NHWC: on the CPU it halves the convolution backward of the default (oneDNN).
    channels_last: bool = True
    # true: torch.compile the whole trunk; "regional": compile each block of the trunk's
    # stages instead (blocks of one shape share a graph: far shorter compile times).
    compile: bool | Literal["regional"] = False
    sync_bn: bool = False
    # Stop on a non-finite loss (naming the step and last checkpoint) unless this is set,
    # in which case the step is skipped and counted.
    skip_nonfinite: bool = False
    # Deterministic algorithms (CPU runs are then bitwise reproducible, resume included).
    deterministic: bool = False
    # torch intra-op threads (0 = torch's default, one per core; 1 on cores shared with other jobs).
    threads: int = 0
    log_every: int = 10
    # Steps at the start of every session left out of the steady-state images/s and timed
    # apart (compilation, cudnn autotuning, allocator growth, the first DataLoader batches).
    throughput_warmup_steps: int = 3
    # The device's dense peak TFLOP/s at the run's precision, for the summary's fraction of
    # peak; 0: looked up by GPU name (H100/H200/A100/V100, bf16/fp16), none on the CPU.
    peak_tflops: float = 0.0
    # Checkpoint every N optimizer steps (0 = only at epoch ends), keeping the last k.
    checkpoint_every: int = 0
    keep_last: int = 2
    # true: a tqdm bar on stderr when stderr is a terminal. Otherwise (false, or output sent
    # to a file or pipe) one plain line every log_every steps on stdout.
    progress: bool = True
    export_backbone: bool = True
    # Seconds a collective may wait before the process group gives up (no hangs).
    dist_timeout_s: int = 600


@dataclass
class Config:
    run_dir: str = "runs/default"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: DDP when launched by torchrun with more than one process, else single process.
    distributed: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    # "auto": continue from the newest checkpoint in run_dir when there is one (so a
    # restarted job, e.g. by torchrun --max-restarts, picks up where it stopped), else
    # start fresh; "none": start fresh (an error if run_dir already holds checkpoints);
    # or the path of a checkpoint file.
    resume: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    swav: SwAVConfig = field(default_factory=SwAVConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- key table


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys(cfg: Config | None = None) -> list[str]:
    """Every dotted key a YAML file or an override may set."""
    cfg = cfg or Config()
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            keys.append(f.name)
    return keys


def _unknown_key(key: str, cfg: Config) -> ConfigError:
    keys = valid_keys(cfg)
    section = key.split(".")[0]
    near = [k for k in keys if k.startswith(section + ".")] or keys
    return ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(near)}")


def _locate(cfg: Config, key: str) -> tuple[Any, str, Any]:
    """(owner object, attribute name, declared type) of a dotted key."""
    parts = key.split(".")
    owner: Any = cfg
    for part in parts[:-1]:
        if not (hasattr(owner, part) and dataclasses.is_dataclass(getattr(owner, part))):
            raise _unknown_key(key, cfg)
        owner = getattr(owner, part)
    name = parts[-1]
    types_ = _field_types(type(owner))
    if name not in types_ or dataclasses.is_dataclass(getattr(owner, name)):
        raise _unknown_key(key, cfg)
    return owner, name, types_[name]


# ------------------------------------------------------------------------ type checking


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp)


def coerce(key: str, value: Any, tp: Any) -> Any:
    """`value` checked against the declared type `tp`; ints widen to floats, nothing else
    is converted silently (a typo such as batch_size=12B is an error, not a string)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key {key!r} expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (list, dict) or tp in (list, dict):
        if not isinstance(value, origin or tp):
            raise bad
        if origin is list and typing.get_args(tp):
            (item,) = typing.get_args(tp)
            return [coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
        return dict(value) if origin is dict else value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(key, value, arg)
            except ConfigError:
                continue
        raise bad
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


def set_key(cfg: Config, key: str, value: Any) -> None:
    owner, name, tp = _locate(cfg, key)
    setattr(owner, name, coerce(key, value, tp))


def _parse_override(text: str, cfg: Config) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value; valid keys: {', '.join(valid_keys(cfg))}")
    key, raw = text.split("=", 1)
    key = key.strip()
    _, _, tp = _locate(cfg, key)
    if tp is str:  # paths and names stay verbatim (no YAML surprises such as 'no' -> False)
        return key, raw
    try:
        return key, yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse the value: {exc}") from None


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not prefix and dataclasses.is_dataclass(getattr(Config(), str(k), None)):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ------------------------------------------------------------------------------ loading


# Where the shipped configs are: a clone's configs/, or what pip installed from it.
CONFIG_DIRS = (
    Path(__file__).resolve().parent.parent / "configs",
    Path(sys.prefix) / "share" / "seer-kernels" / "configs",
)


def resolve_config_path(name: str | Path) -> Path:
    """A path, or the name of a shipped config (`seer_regnety_32gf` -> configs/...yaml)."""
    path = Path(name)
    candidates = [path, path.with_suffix(".yaml")]
    for root in (Path.cwd() / "configs", *CONFIG_DIRS):
        candidates += [root / path.name, root / f"{path.name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"config file {str(name)!r} not found (looked for {', '.join(map(str, candidates))})")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then `key=value` overrides, then checks."""
    cfg = Config()
    if path is not None:
        file = resolve_config_path(path)
        tree = yaml.safe_load(file.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{file}: expected a mapping of config keys, got {type(tree).__name__}")
        for key, value in _flatten(tree).items():
            try:
                set_key(cfg, key, value)
            except ConfigError as exc:
                raise ConfigError(f"{file}: {exc}") from None
    for text in overrides:
        set_key(cfg, *_parse_override(text, cfg))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Value checks the types cannot express; messages name the key."""
    # Imported here: importing seer_kernels loads its compiled ops and Triton, which the
    # other readers of this module (the evaluation CLI, the data tools) do not need.
    from seer_kernels._registry import BACKENDS

    checks = [
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (cfg.train.epochs >= 1 or cfg.train.max_steps >= 1, "train.epochs or train.max_steps must be >= 1"),
        (cfg.augment.global_crops >= 1, "augment.global_crops must be >= 1 (codes come from global crops)"),
        (cfg.augment.global_crops + cfg.augment.local_crops >= 2, "SwAV needs at least two crops"),
        (cfg.augment.local_crops == 0 or cfg.augment.local_size >= 1, "augment.local_size must be >= 1"),
        (len(cfg.augment.global_scale) == 2, "augment.global_scale must be [min, max]"),
        (cfg.augment.crop_attempts >= 1, "augment.crop_attempts must be >= 1"),
        (len(cfg.augment.local_scale) == 2, "augment.local_scale must be [min, max]"),
        (len(cfg.augment.blur_sigma) == 2, "augment.blur_sigma must be [min, max]"),
        (len(cfg.augment.mean) == 3 and len(cfg.augment.std) == 3, "augment.mean/std need 3 values"),
        (cfg.model.head_layers >= 1, "model.head_layers must be >= 1"),
        (cfg.model.n_prototypes >= 2, "model.n_prototypes must be >= 2"),
        (cfg.swav.temperature > 0 and cfg.swav.sinkhorn_epsilon > 0, "swav temperature/epsilon must be > 0"),
        (cfg.swav.queue_length >= 0, "swav.queue_length must be >= 0"),
        (
            cfg.swav.backend in ("", *BACKENDS),
            f"swav.backend must be '' (fastest) or one of {', '.join(BACKENDS)}; got {cfg.swav.backend!r}",
        ),
        (cfg.train.keep_last >= 1, "train.keep_last must be >= 1"),
        (cfg.train.throughput_warmup_steps >= 0, "train.throughput_warmup_steps must be >= 0"),
        (cfg.train.peak_tflops >= 0, "train.peak_tflops must be >= 0 (0: look the device up)"),
        (
            cfg.data.source != "webdataset" or cfg.data.epoch_size > 0,
            "data.epoch_size (samples per epoch) is required for data.source=webdataset",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config from `to_dict` output (a checkpoint's config), ignoring keys a
    newer or older version does not know."""
    cfg = Config()
    known = set(valid_keys(cfg))
    for key, value in _flatten(tree).items():
        if key in known:
            set_key(cfg, key, value)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ------------------------------------------------------------------------ run identity

# What a checkpoint's weights and position mean: the network and its head, the SwAV
# objective, the data and its order (seed), the augmentation. A session that resumes under
# other values would continue a different run, so the trainer refuses it. Everything else
# may change between the sessions of one run: its length (train.epochs, max_steps,
# stop_at_step), the optimizer (a lower lr after a non-finite loss), logging,
# checkpointing, precision, devices and distribution.
RUN_SECTIONS = ("model", "swav", "data", "augment")
RUN_TOP_KEYS = ("seed",)
# Keys inside those sections that change how the same thing is computed, not what (the
# fused and composed heads compute the same loss and gradients).
NOT_RUN_KEYS = ("swav.backend", "swav.head", "data.num_workers", "data.max_consecutive_failures")


def run_keys(cfg: Config | None = None) -> list[str]:
    """The keys a resumed session must share with the checkpoint it continues."""
    return [
        k
        for k in valid_keys(cfg)
        if (k in RUN_TOP_KEYS or k.split(".")[0] in RUN_SECTIONS) and k not in NOT_RUN_KEYS
    ]


def _comparable(key: str, value: Any) -> Any:
    if key == "data.path" and isinstance(value, str) and value:
        return value.rstrip("/") or "/"  # /images/ is /images
    return value


def run_differences(saved: dict[str, Any], cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) of each run key on which `cfg` differs from a
    checkpoint's saved config (`to_dict` output); a key the saved config predates counts
    with its default."""
    flat, defaults = _flatten(saved), Config()
    differences = []
    for key in run_keys(cfg):
        owner, name, _ = _locate(cfg, key)
        new = getattr(owner, name)
        d_owner, d_name, _ = _locate(defaults, key)
        old = flat.get(key, getattr(d_owner, d_name))
        if _comparable(key, old) != _comparable(key, new):
            differences.append((key, old, new))
    return differences


def describe_differences(differences: list[tuple[str, Any, Any]]) -> str:
    """`model.n_prototypes 64 -> 300, data.source 'digits' -> 'folder'` (lists and dicts cut
    at 60 characters; strings, paths among them, whole)."""

    def short(value: Any) -> str:
        text = repr(value)
        return text if isinstance(value, str) or len(text) <= 60 else text[:57] + "..."

    return ", ".join(f"{key} {short(old)} -> {short(new)}" for key, old, new in differences)

"""SEER / SwAV pretraining of a timm RegNet, from one CPU to many GPUs.

    seer-train                                   # the tiny CPU default on the digits
    python -m seer.train -c seer_regnety_32gf data.path=/data/shards-{0000..9999}.tar
    torchrun --nproc_per_node 8 -m seer.train -c seer_regnety_256gf distributed=fsdp
    python -m seer.train -c seer_regnety_256gf --dry-run   # build on the meta device, count

Arguments after the options are `key=value` overrides of the config (see seer.config);
`--print-config` shows the resolved config. The run folder (`run_dir`) receives
config.yaml, checkpoints/, metrics.jsonl, tensorboard/ (when installed), training.png,
summary.json and, at the end, the exported backbone (backbone.pt + backbone.json).

A session continues the run in `run_dir` (resume=auto) only when the checkpoint's config
agrees on the keys that define a run (seer.config.run_keys: model, swav, data, augment,
seed); otherwise it stops before writing anything, unless --force-resume or --new-run
says what to do. Configuration mistakes (an unknown architecture, a missing device, a
backend the device cannot run, a folder without a readable image) stop it the same way:
one line, exit status 2, nothing written.

Output: the banner, one line every train.log_every steps (a tqdm bar instead when stderr
is a terminal and train.progress is true) and the summary go to stdout; warnings and
errors to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from seer import checkpoint as ckpt_io
from seer import distributed as D
from seer.augment import MultiCrop, describe, recipe_name
from seer.config import (
    Config,
    ConfigError,
    describe_differences,
    load_config,
    run_differences,
    save_config,
    to_dict,
)
from seer.data import Shard, build_source
from seer.models import build_model, compile_blocks, flops_per_image, fused_head, parameter_counts, timm_name
from seer.monitor import (
    MetricsLog,
    PhaseTimer,
    Throughput,
    device_peak_tflops,
    format_summary,
    peak_memory_mb,
    plot,
    prototype_stats,
    read_metrics,
)
from seer.optim import build_optimizer, build_schedule, set_lr
from seer_kernels.swav import SwAVQueue, swav_loss, swav_prototype_loss


class NonFiniteLoss(RuntimeError):
    pass


def resolve_precision(cfg: Config, device: torch.device) -> str:
    if cfg.train.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.train.precision


def configure_torch(cfg: Config) -> None:
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


# oneDNN's AMX kernels (Sapphire Rapids and later) return non-finite bf16 weight gradients,
# at random, for the grouped 3x3 stride-2 convolution of a 1x1 input that a RegNet's last
# stage sees on small crops (torch 2.14.1: 21 of 300 backward passes in isolation, and the
# run's weights turn NaN one step later); capped at AVX512_CORE_BF16, 0 of 800.
ONEDNN_ISA_CAP = "AVX512_CORE_BF16"


def cap_onednn_isa() -> bool:
    """Keep oneDNN below AMX for CPU bf16 training, unless the user chose an ISA.

    oneDNN reads ONEDNN_MAX_CPU_ISA when it creates its first kernel, so this takes effect
    in a fresh process (seer-train, torchrun workers) and is ignored after oneDNN has run.
    Returns whether it set the variable."""
    if "ONEDNN_MAX_CPU_ISA" in os.environ or "DNNL_MAX_CPU_ISA" in os.environ:
        return False
    os.environ["ONEDNN_MAX_CPU_ISA"] = ONEDNN_ISA_CAP
    return True


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


# ------------------------------------------------------------------------ checks


def check_device(cfg: Config) -> None:
    """device=cuda without a visible GPU (or a local rank past the GPUs) is a config error
    before any process group, file or model exists."""
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda but this machine has no usable CUDA device (torch.cuda.is_available() is false); "
            "use device=auto or device=cpu"
        )
    local_rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(
            f"device={cfg.device}: LOCAL_RANK {local_rank} but only {count} CUDA devices are visible"
        )


def check_arch(cfg: Config) -> None:
    """model.arch names a timm model (or SEER's regnety_10b)."""
    import timm

    name, _ = timm_name(cfg.model.arch, cfg.model.timm_kwargs)
    if timm.is_model(name):
        return
    near = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else " (timm.list_models() lists them)"
    raise ConfigError(f"model.arch {cfg.model.arch!r} is not a timm model{hint}")


def check_backend(cfg: Config, device: torch.device, fused: bool) -> None:
    """swav.backend (or SEER_KERNELS_BACKEND when it is unset) runs every op the run's head
    calls on `device` (the fused head's prototype_cross_entropy, or the composed head's
    swav_cross_entropy); otherwise the first step would fail, after the run folder was
    written."""
    from seer_kernels import _backend, _registry

    key, value = "swav.backend", cfg.swav.backend
    if not value:
        key, value = _backend.ENV_VAR, os.environ.get(_backend.ENV_VAR, "")
        if not value:
            return
    unused = "swav_cross_entropy" if fused else "prototype_cross_entropy"
    for op in (op for op in _registry.OPS if op != unused):
        try:
            _backend.resolve(value, device, op)  # `key` names where the value came from
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"{key}={value!r} cannot run this run's ops on {device.type}: {exc}") from None


# ------------------------------------------------------------------------ RNG state


def rng_state(gen: torch.Generator, device: torch.device) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
        "augment": gen.get_state(),
    }


def set_rng_state(state: dict, gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    gen.set_state(state["augment"])


# ------------------------------------------------------------------------ trainer


class Trainer:
    """Owns the model, optimizer, data, queue and position of one training run.

    `force_resume`: continue the checkpoint even where its run keys differ from `cfg`.
    `new_run`: where run_dir holds a different run, train in the first of run_dir-2,
    run_dir-3, ... that is empty or holds this run."""

    def __init__(self, cfg: Config, force_resume: bool = False, new_run: bool = False) -> None:
        self.cfg = cfg
        check_device(cfg)
        check_arch(cfg)
        self.info = D.setup(cfg)
        configure_torch(cfg)
        self.device = self.info.device
        self.precision = resolve_precision(cfg, self.device)
        if self.device.type == "cpu" and self.precision == "bf16":
            cap_onednn_isa()
        if self.device.type == "cpu" and self.precision != "fp32" and cfg.train.channels_last:
            # torch 2.14's oneDNN returns non-finite weight gradients, at random, for strided
            # grouped bf16 convolutions in NHWC on the CPU (reproduced in isolation).
            warnings.warn("train.channels_last is disabled for low precision on the CPU", stacklevel=2)
            cfg.train.channels_last = False
        if self.precision == "fp16" and self.info.mode == "fsdp":
            raise ConfigError("train.precision=fp16 is not supported with distributed=fsdp; use bf16")
        if cfg.optimizer.sharded and self.info.mode == "fsdp":
            raise ConfigError("optimizer.sharded=true is for DDP; FSDP already shards the optimizer state")
        self.fused_head = fused_head(cfg.swav.head, cfg.swav.backend, self.device)
        check_backend(cfg, self.device, self.fused_head)
        self.run_dir = Path(cfg.run_dir)
        # Which checkpoint this session continues, if any, is settled before anything is
        # built or written (run_dir is created by fit, when training starts).
        self._resume_from = self._choose_run(force_resume, new_run)

        self.source = build_source(
            cfg.data,
            cfg.train.batch_size,
            Shard(self.info.rank, self.info.world),
            cfg.seed,
            self.device,
            crop_size=cfg.augment.global_size,
        )
        self.steps_per_epoch = self.source.steps_per_epoch()
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch
        self.global_batch = cfg.train.batch_size * self.info.world
        self.multicrop = MultiCrop(cfg.augment)
        self.n_global, self.n_crops = cfg.augment.global_crops, sum(self.multicrop.crops_per_group)

        torch.manual_seed(cfg.seed)  # same initial weights on every rank (FSDP2 does not broadcast)
        self.raw = self._build_model()
        self.model = D.wrap(self.raw, cfg, self.info, self.precision)
        self.schedule = build_schedule(
            cfg.optimizer, self.total_steps, self.steps_per_epoch, self.global_batch
        )
        self.optimizer = build_optimizer(cfg.optimizer, self.model, self.schedule(0))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.queue = self._build_queue()
        self.gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.info.rank + 1)

        self.step = self.epoch = self.batch_in_epoch = 0
        self.counters = {"images_seen": 0, "skipped_images": 0, "nonfinite_steps": 0}
        # Unreadable samples by name: each counts once however often it is met. `skipped`
        # is the union over the ranks (rank 0's), `_new_skips` this rank's since the last
        # merge; `_skipped_base` the count of a checkpoint that predates the names.
        self.skipped: set[str] = set()
        self._new_skips: set[str] = set()
        self._skipped_base = 0
        self.last_checkpoint: Path | None = None
        self.last_saved_step = -1
        self.last_loss = float("nan")
        self.resume()
        if self.info.is_main:
            self._config_warnings()

    # -------------------------------------------------------------- construction

    def _build_model(self):
        cfg = self.cfg
        try:
            model = build_model(cfg.model, backend=cfg.swav.backend or None)
        except ValueError as exc:  # timm refused model.timm_kwargs
            raise ConfigError(
                f"model.timm_kwargs {cfg.model.timm_kwargs} with model.arch {cfg.model.arch!r}: {exc}"
            ) from None
        model = model.to(self.device)
        if cfg.train.channels_last and self.info.mode != "fsdp":
            # FSDP2 shards only contiguous parameters; under FSDP the inputs alone are NHWC,
            # which the convolutions follow.
            model = model.to(memory_format=torch.channels_last)
        if cfg.train.grad_checkpointing:
            model.backbone.set_grad_checkpointing(True)
        if cfg.train.compile == "regional":
            sizes = {cfg.augment.global_size} | (
                {cfg.augment.local_size} if cfg.augment.local_crops else set()
            )
            compile_blocks(model.backbone, len(sizes))
        elif cfg.train.compile:
            model.backbone.compile()  # in place: state-dict keys keep their names
        return model

    def _build_queue(self) -> SwAVQueue | None:
        if self.cfg.swav.queue_length <= 0:
            return None
        queue = SwAVQueue(
            self.cfg.swav.queue_length,
            self.cfg.model.head_output_dim,
            self.n_global,
            global_batch=self.global_batch,
            world_size=self.info.world,
        )
        return queue.to(self.device)

    # -------------------------------------------------------------- checkpoints

    def _say(self, message: str) -> None:
        """A line of the run's story (rank 0, stdout, flushed at once for log files)."""
        if self.info.is_main:
            print(message, flush=True)

    def _warn(self, message: str) -> None:
        if self.info.is_main:
            print(f"seer-train: warning: {message}", file=sys.stderr, flush=True)

    def _choose_run(self, force_resume: bool, new_run: bool) -> tuple[Path, dict | None] | None:
        """The checkpoint this session continues (its path, and its contents on rank 0,
        which read them), or None for a fresh start. Decided on rank 0 and broadcast, so
        every rank refuses, resumes or starts alike; a refusal raises ConfigError."""
        if new_run and self.cfg.resume not in ("auto", "none"):
            raise ConfigError("--new-run goes with resume=auto or resume=none, not with a checkpoint path")
        if force_resume and self.cfg.resume == "none":
            raise ConfigError(
                "--force-resume goes with resume=auto or a checkpoint path, not with resume=none"
            )
        decision: tuple = ("error", "")
        state = None
        if self.info.is_main:
            try:
                run_dir, path, state, note = self._decide(force_resume, new_run)
                decision = ("ok", str(run_dir), None if path is None else str(path), note)
            except ConfigError as exc:
                decision = ("error", str(exc))
        decision = D.broadcast_from_main(decision, self.info)
        if decision[0] == "error":
            raise ConfigError(decision[1])
        _, run_dir, path, note = decision
        if run_dir != str(self.run_dir):
            self.cfg.run_dir, self.run_dir = run_dir, Path(run_dir)
        if note:
            self._say(f"seer-train: {note}")
        return None if path is None else (Path(path), state)

    def _decide(self, force_resume: bool, new_run: bool) -> tuple[Path, Path | None, dict | None, str]:
        """(run_dir, checkpoint or None, its contents, a note to print), on rank 0."""
        cfg, home = self.cfg, Path(self.cfg.run_dir)
        if cfg.resume not in ("auto", "none"):
            path = Path(cfg.resume)
            if not path.is_file():
                raise ConfigError(f"resume={cfg.resume!r}: no such checkpoint file")
            try:
                state = ckpt_io.load_checkpoint(path)
            except Exception as exc:  # any unreadable file
                raise ConfigError(f"resume={cfg.resume!r}: {exc}") from None
            differences = run_differences(state["config"], cfg)
            if differences and not force_resume:
                raise ConfigError(
                    f"checkpoint {path} belongs to a run with other settings: {describe_differences(differences)}; "
                    "--force-resume continues from it with the new settings"
                )
            return home, path, state, self._forced_note(differences)
        for run_dir in self._run_dirs(home, new_run):
            note = (
                f"run_dir {home} holds a different run: this one is in {run_dir}" if run_dir != home else ""
            )
            if cfg.resume == "none":
                existing = ckpt_io.list_checkpoints(run_dir)
                if not existing:
                    return run_dir, None, None, note
                if not new_run:
                    raise ConfigError(
                        f"run_dir {str(run_dir)!r} already holds checkpoints ({existing[-1].name}); use "
                        "resume=auto to continue that run, --new-run to start one in a numbered run_dir "
                        "beside it, or another run_dir"
                    )
                continue
            found = ckpt_io.latest_checkpoint(run_dir)
            if found is None:
                return run_dir, None, None, note
            path, state = found
            differences = run_differences(state["config"], cfg)
            if not differences:
                return run_dir, path, state, note
            if force_resume:
                return run_dir, path, state, self._forced_note(differences)
            if not new_run:
                raise ConfigError(
                    f"run_dir {str(run_dir)!r} holds a run with other settings ({path.name}): "
                    f"{describe_differences(differences)}. --force-resume continues it with the new settings, "
                    "--new-run starts a new run beside it (run_dir-2, -3, ...), or give another run_dir"
                )
        raise AssertionError("unreachable: _run_dirs is endless")

    @staticmethod
    def _run_dirs(home: Path, numbered: bool):
        """run_dir, then (with --new-run) run_dir-2, run_dir-3, ..."""
        yield home
        if numbered:
            base = home if home.name else home.resolve()  # run_dir=. has no name of its own
            n = 2
            while True:
                yield base.with_name(f"{base.name}-{n}")
                n += 1

    @staticmethod
    def _forced_note(differences: list) -> str:
        if not differences:
            return ""
        return f"--force-resume: continuing with new settings: {describe_differences(differences)}"

    def resume(self) -> None:
        if self._resume_from is None:
            return
        path, state = self._resume_from
        self._resume_from = None
        if state is None:
            state = ckpt_io.load_checkpoint(path)
        self._check_shapes(path, state["model"])
        D.load_model_state(self.raw, state["model"])
        D.load_optimizer_state(self.raw, self.optimizer, state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch"]
        self.counters.update(state.get("counters", {}))
        self.skipped = set(state.get("skipped", ()))
        self._skipped_base = max(self.counters["skipped_images"] - len(self.skipped), 0)
        self.last_loss = state.get("last_loss", float("nan"))
        if state["world_size"] == self.info.world:
            mine = state["ranks"][self.info.rank]
            if self.queue is not None and mine["queue"] is not None:
                self.queue.load_state_dict(mine["queue"])
            set_rng_state(mine["rng"], self.gen, self.device)
        else:
            self._say(
                f"seer-train: {path} was written by {state['world_size']} ranks, this run has {self.info.world}: "
                "queues and random streams start afresh"
            )
        self.last_checkpoint, self.last_saved_step = path, self.step
        self._say(f"resumed from {path}: step {self.step}, epoch {self.epoch}, batch {self.batch_in_epoch}")
        if self.batch_in_epoch >= self.steps_per_epoch:
            # The data shrank (or the batch grew) since the checkpoint: no batch is left in
            # its epoch. Reading from there would find none, forever.
            self._say(
                f"seer-train: batch {self.batch_in_epoch} of epoch {self.epoch} lies past the end of this data's "
                f"epoch ({self.steps_per_epoch} batches): continuing at epoch {self.epoch + 1}, batch 0"
            )
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _check_shapes(self, path: Path, saved: dict) -> None:
        """Weights that do not fit the model (a forced resume across a change of model
        keys) are a config error naming them, not load_state_dict's traceback."""
        own = {k: tuple(v.shape) for k, v in self.raw.state_dict().items()}
        missing = [k for k in own if k not in saved]
        unexpected = [k for k in saved if k not in own]
        shapes = [
            f"{k} {tuple(saved[k].shape)} -> {own[k]}"
            for k in own
            if k in saved and tuple(saved[k].shape) != own[k]
        ]
        if missing or unexpected or shapes:
            problems = (
                shapes[:3]
                + [f"missing {k}" for k in missing[:2]]
                + [f"unexpected {k}" for k in unexpected[:2]]
            )
            raise ConfigError(
                f"the weights of {path} do not fit this model ({len(shapes)} of another shape, {len(missing)} missing, "
                f"{len(unexpected)} unexpected: {', '.join(problems)}); a change of model keys cannot be resumed"
            )

    def save_checkpoint(self) -> None:
        """Collective: every rank contributes its shard, queue and random state."""
        self._merge_skips()
        model_state = D.model_state(self.raw)
        optim_state = D.optimizer_state(self.raw, self.optimizer)
        queue = None if self.queue is None else {k: v.cpu() for k, v in self.queue.state_dict().items()}
        ranks = D.gather_to_main({"queue": queue, "rng": rng_state(self.gen, self.device)}, self.info)
        path = ckpt_io.checkpoint_path(self.run_dir, self.step)
        if self.info.is_main:
            state = {
                "format": ckpt_io.FORMAT,
                "version": ckpt_io.VERSION,
                "step": self.step,
                "epoch": self.epoch,
                "batch": self.batch_in_epoch,
                "config": to_dict(self.cfg),
                "arch": self.cfg.model.arch,
                "model": model_state,
                "optimizer": optim_state,
                "scaler": None if self.scaler is None else self.scaler.state_dict(),
                "schedule": self.schedule.state_dict(),
                "ranks": ranks,
                "world_size": self.info.world,
                "counters": dict(self.counters),
                "skipped": sorted(self.skipped),
                "last_loss": self.last_loss,
            }
            ckpt_io.atomic_save(state, path)
            ckpt_io.prune(self.run_dir, self.cfg.train.keep_last)
            self._final_state = state
        D.barrier(self.info)
        self.last_checkpoint, self.last_saved_step = path, self.step

    # -------------------------------------------------------------- one step

    def _autocast(self):
        # Also under FSDP's bf16 policy: autocast casts activations at the boundaries of
        # the fp32 units (BatchNorm, prototypes).
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def _queue_in_use(self) -> bool:
        return self.queue is not None and self.epoch >= self.cfg.swav.queue_start_epoch

    def _crops(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images.to(self.device, non_blocking=True)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        crops = self.multicrop(x, self.gen)
        if self.cfg.train.channels_last:
            crops = [c.contiguous(memory_format=torch.channels_last) for c in crops]
        return crops

    def train_step(self, images: torch.Tensor, timer: PhaseTimer, want_stats: bool) -> dict:
        b = images.shape[0]
        crops = self._crops(images)
        self.raw.prototypes.normalize()
        use_queue = self._queue_in_use() and self.queue.is_full
        timer.mark("data")
        z, loss, assign_scores = self._swav_head(crops, b, use_queue, timer, want_stats)
        loss_value = float(loss.detach())
        timer.mark("loss")
        stats = prototype_stats(assign_scores) if want_stats else {}
        if D.any_rank(not math.isfinite(loss_value), self.info):
            self._nonfinite(loss_value)
            return {"loss": float("nan"), "skipped_step": True, **stats}
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        timer.mark("backward")
        self._optimizer_step()
        if self._queue_in_use():
            self.queue.enqueue(z[: self.n_global * b].detach().view(self.n_global, b, -1))
        timer.mark("optimizer")
        return {"loss": loss_value, "queue": use_queue, **stats}

    def _swav_head(self, crops, b: int, use_queue: bool, timer: PhaseTimer, want_stats: bool):
        """The embeddings z (V B, D), the SwAV loss of the step and the assignment crops'
        (A B, K) scores (for the monitoring stats; None unless want_stats on the fused
        head). Fused (swav.head): the model returns the loss of
        seer_kernels.swav.swav_prototype_loss, computed in the prototypes' forward from the
        embeddings (assignment and queue scores under no_grad, one Sinkhorn call on
        (A, B + Q, K), prototype_cross_entropy); composed: the scores of every crop and
        queue row, then swav_loss."""
        cfg = self.cfg.swav
        queue = self.queue.embeddings if use_queue else None  # (A, Q, D)
        settings = dict(
            temperature=cfg.temperature,
            sinkhorn_iterations=cfg.sinkhorn_iterations,
            sinkhorn_epsilon=cfg.sinkhorn_epsilon,
            process_group="world" if self.info.world > 1 else None,
            backend=cfg.backend or None,
        )
        if self.fused_head:
            v = self.n_crops
            head = functools.partial(
                swav_prototype_loss,
                n_assign=self.n_global,
                queue_embeddings=queue,
                return_scores=want_stats,
                **settings,
            )
            with self._autocast():
                z, out = self.model(
                    crops, fused_loss=lambda z, w, normalize: head(z.view(v, b, -1), w, normalize=normalize)
                )
            timer.mark("forward")
            loss, scores = out if want_stats else (out, None)
            return z, loss, None if scores is None else scores[:, :b].reshape(self.n_global * b, -1)
        queue_in = None if queue is None else queue.reshape(-1, queue.shape[-1])
        with self._autocast():
            z, all_scores = self.model(crops, queue_in)
        timer.mark("forward")
        n, k = z.shape[0], all_scores.shape[1]
        scores, queue_scores = all_scores[:n], (all_scores[n:].detach() if use_queue else None)
        loss = swav_loss(
            scores.view(self.n_crops, b, k),
            self.n_global,
            queue_scores=None if queue_scores is None else queue_scores.view(self.n_global, -1, k),
            **settings,
        )
        return z, loss, scores[: self.n_global * b]

    def _optimizer_step(self) -> None:
        if self.step < self.cfg.swav.freeze_prototypes_steps:
            # Frozen prototypes: drop their gradient, so the optimizer skips them entirely
            # (no momentum, no weight decay), as SwAV's freeze_prototypes_niters.
            for p in self.raw.prototypes.parameters():
                p.grad = None
        if self.cfg.optimizer.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optimizer.grad_clip)
        set_lr(self.optimizer, self.schedule(self.step))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _nonfinite(self, value: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if not self.cfg.train.skip_nonfinite:
            last = str(self.last_checkpoint) if self.last_checkpoint else "none written yet"
            raise NonFiniteLoss(
                f"non-finite loss ({value}) at step {self.step} (epoch {self.epoch}); last good checkpoint: {last}. "
                "Resume from it with resume=auto (perhaps with a lower optimizer.lr), or set "
                "train.skip_nonfinite=true to skip such steps"
            )
        self.counters["nonfinite_steps"] += 1

    # -------------------------------------------------------------- the loop

    def _advance(self) -> None:
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch >= self.steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _stop_step(self) -> int:
        stop = self.cfg.train.stop_at_step
        return min(self.total_steps, stop) if stop > 0 else self.total_steps

    def fit(self) -> dict:
        cfg, info = self.cfg, self.info
        stop = self._stop_step()
        if self.step >= stop:
            return self._nothing_to_train(stop)
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            self._announce()
        log = MetricsLog(self.run_dir, enabled=info.is_main)
        timer = PhaseTimer(self.device)
        clock = Throughput(self.device, cfg.train.throughput_warmup_steps)
        self._warmup_phases: dict[str, float] = {}
        # A bar only where a person watches: sent to a file, tqdm's carriage returns
        # make one endless line, so the log gets a plain line per log interval instead.
        use_bar = info.is_main and cfg.train.progress and _is_terminal(sys.stderr)
        self._plain_lines = info.is_main and not use_bar
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not use_bar,
            dynamic_ncols=True,
            unit="step",
            file=sys.stderr,
        )
        start_step, start_time = self.step, time.perf_counter()
        window = {"loss": 0.0, "n": 0}
        clock.start()
        try:
            while self.step < stop:
                epoch = self.epoch
                batches = self.source.epoch(epoch, self.batch_in_epoch)
                timer.start()
                for images, skipped in batches:
                    self._new_skips.update(skipped)
                    want_stats = (self.step + 1) % cfg.train.log_every == 0 or self.step + 1 == stop
                    out = self.train_step(images, timer, want_stats)
                    lr = self.schedule(self.step)
                    self._advance()
                    self.counters["images_seen"] += images.shape[0] * info.world
                    clock.mark_step(images.shape[0] * info.world, last=self.step >= stop)
                    if clock.steps == clock.warmup_steps:
                        self._warmup_phases = timer.reset()  # the split of the steady steps alone
                    if not out.get("skipped_step"):
                        window["loss"] += out["loss"]
                        window["n"] += 1
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{out['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{clock.rate():.0f}", refresh=False
                    )
                    if want_stats:
                        self._log(log, window, out, lr, clock)
                        timer.collect()  # CUDA: read the phase events (one sync per log)
                    if self._checkpoint_due(epoch) or self.step >= stop:
                        with clock.checkpoint():
                            self.save_checkpoint()
                    if self.step >= stop or self.epoch != epoch:
                        break
                    timer.start()
        finally:
            bar.close()
            log.close()
        if self.last_saved_step != self.step:
            with clock.checkpoint():
                self.save_checkpoint()
        return self._finish(start_step, time.perf_counter() - start_time, timer, clock)

    def _nothing_to_train(self, stop: int) -> dict:
        """A finished run run again: said, and nothing written (no config, summary or
        export); the summary returned is the one on disk."""
        if stop < self.total_steps:
            why, further = (
                f"train.stop_at_step={self.cfg.train.stop_at_step}",
                "raise or drop train.stop_at_step",
            )
        else:
            why, further = "finished", "raise train.epochs or train.max_steps"
        self._say(
            f"seer-train: {self.run_dir} is already at step {self.step} of {self.total_steps} ({why}): nothing to "
            f"train, nothing changed. To train it further, {further}; another run_dir starts a new run"
        )
        try:
            summary = json.loads((self.run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        return {
            **summary,
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "steps_run": 0,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
        }

    def _checkpoint_due(self, epoch_before: int) -> bool:
        every = self.cfg.train.checkpoint_every
        return self.epoch != epoch_before or (every > 0 and self.step % every == 0)

    def _merge_skips(self) -> None:
        """Collective: the names of the samples skipped on every rank since the last merge
        join rank 0's set; skipped_images counts the set (files, not encounters)."""
        new = sorted(self._new_skips)
        self._new_skips.clear()
        if self.info.world > 1:
            if not D.any_rank(bool(new), self.info):
                return
            parts = D.gather_to_main(new, self.info)
            new = [name for part in parts or [] for name in part]
        self.skipped.update(new)
        self.counters["skipped_images"] = self._skipped_base + len(self.skipped)

    def _log(self, log: MetricsLog, window: dict, out: dict, lr: float, clock: Throughput) -> None:
        self._merge_skips()
        if window["n"]:
            self.last_loss = window["loss"] / window["n"]
        steady = clock.steady_rate()
        record = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": self.last_loss,
            "lr": lr,
            # Images/s of the steps since the last record, checkpoint writes excluded; and
            # the steady-state rate of the session so far (None during the warm-up): the
            # last record's equals the summary's images_per_s.
            "img_s": clock.window_rate(),
            "steady_img_s": steady,
            "warmup": clock.steps <= clock.warmup_steps,
            "proto_spread": out.get("proto_spread"),
            "proto_usage": out.get("proto_usage"),
            "queue": bool(out.get("queue")),
            **self.counters,
        }
        log.write(record)
        window.update(loss=0.0, n=0)
        if self._plain_lines:
            skipped = (
                f", skipped images {self.counters['skipped_images']}"
                if self.counters["skipped_images"]
                else ""
            )
            print(
                f"step {self.step}/{self.total_steps} (epoch {self.epoch}): loss {self.last_loss:.4f}, "
                f"lr {lr:.3g}, {record['img_s']:.1f} images/s{skipped}",
                flush=True,
            )

    def _announce(self) -> None:
        counts = parameter_counts(self.raw)
        self._say(
            f"seer-train: {self.cfg.model.arch} ({counts['trunk'] / 1e6:.2f}M trunk, {counts['total'] / 1e6:.2f}M total), "
            f"{self.source.description}, {self.info.world} x {self.cfg.train.batch_size} images/step, "
            f"{self.n_global}x{self.cfg.augment.global_size} + {self.n_crops - self.n_global}x{self.cfg.augment.local_size} crops, "
            f"{self.total_steps} steps ({self.steps_per_epoch}/epoch), {self.device}, {self.precision}, "
            f"mode {self.info.mode}, run_dir {self.run_dir}"
        )
        self._say(f"seer-train: augment: {describe(self.cfg.augment)}")

    def _config_warnings(self) -> None:
        """Settings that run, but rarely as meant: said once, at the start."""
        cfg = self.cfg
        if cfg.data.source in ("folder", "webdataset") and recipe_name(cfg.augment) == "digits recipe":
            self._warn(
                f"data.source={cfg.data.source} with the digits recipe (rotation and shear, no flip or colour "
                "jitter, the digits' mean/std): for photos, SwAV's recipe is -c photos (or the augment keys of "
                "configs/photos.yaml)"
            )
        if cfg.augment.global_size > cfg.data.image_size and cfg.data.source != "synthetic":
            self._warn(
                f"augment.global_size {cfg.augment.global_size} > data.image_size {cfg.data.image_size}: every "
                "global crop is upsampled from the decoded image; decode at least at the crop size"
            )

    def _flops(self, images_per_s: float) -> dict:
        """Achieved model TFLOP/s and the fraction of the device's peak, when known."""
        sizes = [self.cfg.augment.global_size] * self.n_global
        sizes += [self.cfg.augment.local_size] * (self.n_crops - self.n_global)
        try:
            per_image = flops_per_image(self.cfg.model, sizes) / 1e12
        except Exception as exc:  # a report must not lose the run's summary
            warnings.warn(f"cannot count the model's FLOPs on the meta device: {exc}", stacklevel=2)
            return {}
        peak = self.cfg.train.peak_tflops or device_peak_tflops(self.device, self.precision)
        achieved = per_image * images_per_s / self.info.world  # per device, as the peak
        return {
            "tflop_per_image": per_image,
            "achieved_tflops": achieved,
            "peak_tflops": peak,
            "peak_fraction": achieved / peak if peak else None,
        }

    def _finish(self, start_step: int, wall: float, timer: PhaseTimer, clock: Throughput) -> dict:
        self._merge_skips()
        phases = timer.collect()
        # Before the warm-up ends, the timer's totals are all the warm-up's.
        warmup_phases = self._warmup_phases if clock.steps >= clock.warmup_steps else phases
        steady_phases = phases if clock.steady_steps else {}
        steps_run = self.step - start_step
        rate = clock.rate() if steps_run else 0.0
        timed = clock.warmup_s + clock.steady_s + clock.checkpoint_s
        summary = {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "steps_run": steps_run,
            "final_loss": self.last_loss,
            "ln_k": math.log(self.cfg.model.n_prototypes),
            # Steady state (see seer.monitor.Throughput); the warm-up's rate only for a
            # session of warm-up steps alone (steady_steps 0).
            "images_per_s": rate,
            "steady_steps": clock.steady_steps,
            "steady_s": clock.steady_s,
            "warmup_steps": min(clock.steps, clock.warmup_steps),
            "warmup_s": clock.warmup_s,
            "checkpoint_writes": clock.checkpoints,
            "checkpoint_s": clock.checkpoint_s,
            "other_s": max(wall - timed, 0.0),
            "wall_s": wall,
            # Phases of the steady steps (of the warm-up steps when there are no others).
            "time_s": steady_phases or warmup_phases,
            "warmup_time_s": warmup_phases,
            "memory": peak_memory_mb(self.device),
            **(self._flops(rate) if steps_run else {}),
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            **self.counters,
        }
        if self.info.is_main:
            records = read_metrics(self.run_dir / "metrics.jsonl")
            if records:
                summary.update(
                    proto_usage=records[-1].get("proto_usage"), proto_spread=records[-1].get("proto_spread")
                )
            plot(self.run_dir, self.cfg.model.n_prototypes)
            if self.cfg.train.export_backbone:
                state = getattr(self, "_final_state", None) or ckpt_io.load_checkpoint(self.last_checkpoint)
                summary["backbone"] = str(ckpt_io.export_backbone(state, self.run_dir / "backbone.pt"))
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
            print(
                format_summary(
                    {
                        **summary,
                        "proto_usage": summary.get("proto_usage") or float("nan"),
                        "proto_spread": summary.get("proto_spread") or float("nan"),
                    }
                ),
                flush=True,
            )
        return summary


# ------------------------------------------------------------------------ entry point


def dry_run(cfg: Config) -> dict:
    """Build the model on the meta device (no memory) and report its size."""
    check_arch(cfg)
    with torch.device("meta"):
        model = build_model(cfg.model)
    counts = parameter_counts(model)
    print(json.dumps({"arch": cfg.model.arch, "parameters": counts}, indent=2))
    return counts


def failure_note(trainer: Trainer | None, exc: BaseException) -> str:
    """Where a rank of a multi-process run died and how to continue: the ranks' logs
    interleave, and the error of a rank whose peer died (gloo: connection closed or reset,
    or a timeout) names neither the rank nor the step."""
    rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    where, last = "while starting", "none"
    if trainer is not None:
        where = f"at step {trainer.step} of {trainer.total_steps} (epoch {trainer.epoch})"
        last = str(trainer.last_checkpoint) if trainer.last_checkpoint else "none written yet"
    message = (str(exc).splitlines() or [""])[0][:300]
    return (
        f"seer-train: rank {rank} of {world} failed {where}: {type(exc).__name__}: {message}\n"
        "seer-train: a rank failing in a collective is usually the victim of another rank's failure "
        f"(see the first rank to fail); last checkpoint: {last}; rerun with resume=auto to continue"
    )


def train(cfg: Config, force_resume: bool = False, new_run: bool = False) -> dict:
    """Run (or continue) the training described by `cfg`; returns the summary. See
    Trainer for `force_resume` and `new_run`."""
    trainer = None
    try:
        trainer = Trainer(cfg, force_resume=force_resume, new_run=new_run)
        return trainer.fit()
    except ConfigError:
        raise  # every rank refuses alike (decided on rank 0): no rank is a victim of another
    except Exception as exc:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            print(failure_note(trainer, exc), file=sys.stderr, flush=True)
        raise
    finally:
        trainer = None  # drop the model (and its process groups) before they are destroyed
        D.teardown()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="seer-train",
        description="SEER/SwAV pretraining of a timm RegNet (see docs/training.md).",
        epilog="overrides: key=value pairs, e.g. train.batch_size=64 optimizer.lr=0.3 resume=auto. "
        "A run_dir holding a run with other model/swav/data/augment/seed keys is refused (exit 2) "
        "unless --force-resume or --new-run is given. train.progress=true shows a tqdm bar when "
        "stderr is a terminal; otherwise a line every train.log_every steps goes to stdout.",
    )
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        help="YAML file or shipped config name (default: the tiny CPU default)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="build the model on the meta device, print sizes, exit"
    )
    mismatch = parser.add_mutually_exclusive_group()
    mismatch.add_argument(
        "--force-resume",
        action="store_true",
        help="continue the checkpoint of run_dir (or resume=PATH) even where its model, swav, data, "
        "augment or seed keys differ from this config (it then trains on with the new values)",
    )
    mismatch.add_argument(
        "--new-run",
        action="store_true",
        help="where run_dir holds a run with other model, swav, data, augment or seed keys, train in "
        "the first of RUN_DIR-2, RUN_DIR-3, ... that is empty or holds this run, instead of refusing",
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"seer-train: config error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    try:
        if args.dry_run:
            dry_run(cfg)
            return 0
        train(cfg, force_resume=args.force_resume, new_run=args.new_run)
    except (ConfigError, NonFiniteLoss) as exc:
        print(f"seer-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The trainer end to end on the CPU: a short default run learns, resume is exact, two
gloo processes (DDP with a ZeRO-sharded LARS, FSDP2) end with identical parameters,
checkpoints are atomic and pruned, the exported backbone loads in timm, non-finite
losses stop the run (or are skipped), and load_backbone rejects foreign files. A run_dir
never continues a different run, a finished run is left alone, a shrunk dataset does not
hang the resume, and the output reads line by line in a file."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import timm
import torch

from seer import checkpoint as ckpt_io
from seer.config import load_config
from seer.models import build_backbone
from seer.monitor import format_summary
from seer.train import ONEDNN_ISA_CAP, NonFiniteLoss, Trainer, cap_onednn_isa, train

ROOT = Path(__file__).resolve().parent.parent

# Small and fast: the default recipe at batch 16.
SMALL = ["train.batch_size=16", "train.progress=false", "train.threads=1", "train.log_every=1"]


def small_cfg(run_dir: Path, *overrides: str):
    return load_config(None, [f"run_dir={run_dir}", *SMALL, *overrides])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------ learning


def test_default_config_few_steps_loss_finite_and_decreasing(tmp_path):
    run = tmp_path / "run"
    summary = train(small_cfg(run, "train.batch_size=32", "train.max_steps=12", "seed=3"))
    losses = [r["loss"] for r in metrics(run)]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.05, losses
    # Collapse indicators are logged; the first steps are not collapsed.
    assert all(r["proto_spread"] > 0 and 0 < r["proto_usage"] <= 1 for r in metrics(run))
    assert summary["final_loss"] == pytest.approx(losses[-1])
    assert summary["images_per_s"] > 0 and set(summary["time_s"]) >= {
        "data",
        "forward",
        "loss",
        "backward",
        "optimizer",
    }
    for name in ("config.yaml", "summary.json", "training.png", "backbone.pt", "backbone.json"):
        assert (run / name).is_file(), name


# ------------------------------------------------------------------------ the fused head


def test_fused_head_trains_like_the_composed_head(tmp_path):
    """The fused head (prototype_cross_entropy) against the previous head (prototype_scores
    into swav_cross_entropy, cpu backend): the same losses step by step, within the
    tolerance derived here. Both heads compute the same loss from the same parameters up to
    fp32 rounding; over steps the training dynamics amplify any rounding difference, by
    an amount that belongs to the run, not to the head. It is measured on the run itself:
    the previous head on the reference backend differs from it by fp32 rounding alone, so
    the fused head may differ at step t by at most twice the largest difference the
    reference backend shows up to t, plus 1e-6 of the loss (the tests/tolerance.py rule,
    applied to training). At step 1 (same parameters) that bound is ~1e-6, so a wrong
    loss fails at once. 12 steps of the small default: prototypes unfrozen at step 4, the
    queue in the Sinkhorn from step 3. (The first 200 steps of the demo config, compared the
    same way by hand: benchmarks/results/prototype-cross-entropy/README.md.)"""
    common = [
        "train.max_steps=12",
        "swav.freeze_prototypes_steps=4",
        "swav.queue_length=32",
        "swav.queue_start_epoch=0",
        "train.deterministic=true",
        "train.export_backbone=false",
    ]
    heads = {
        "fused": ["swav.head=fused"],
        "composed": ["swav.head=composed", "swav.backend=cpu"],
        "reference": ["swav.head=composed", "swav.backend=reference"],
    }
    losses = {}
    for name, overrides in heads.items():
        train(small_cfg(tmp_path / name, *common, *overrides))
        records = metrics(tmp_path / name)
        losses[name] = [r["loss"] for r in records]
        assert len(losses[name]) == 12 and all(math.isfinite(x) for x in losses[name])
        assert any(r["queue"] for r in records)
    spread = 0.0
    for t, (fused, composed, ref) in enumerate(
        zip(losses["fused"], losses["composed"], losses["reference"], strict=True)
    ):
        spread = max(spread, abs(composed - ref))
        bound = 2 * spread + 1e-6 * abs(composed)
        assert abs(fused - composed) <= bound, (
            f"step {t + 1}: {fused} vs {composed}, bound {bound:.2e}: {losses}"
        )


# ------------------------------------------------------------------------ resume


RESUME = [
    "train.max_steps=6",
    "train.deterministic=true",
    "swav.queue_length=32",  # the queue fills after 2 steps and is used from step 3 on
    "swav.queue_start_epoch=0",
    # The split at step 3 falls inside the prototype freeze: the optimizer holds no state
    # for the prototypes yet, and the resumed run must load that and unfreeze them at 4.
    "swav.freeze_prototypes_steps=4",
    "train.export_backbone=false",
]


def test_resume_is_exact(tmp_path):
    straight = tmp_path / "straight"
    train(small_cfg(straight, *RESUME))
    split = tmp_path / "split"
    first = train(small_cfg(split, *RESUME, "train.stop_at_step=3"))
    assert first["step"] == 3 and [p.name for p in ckpt_io.list_checkpoints(split)] == ["step_00000003.pt"]
    second = train(small_cfg(split, *RESUME))  # resume=auto is the default
    assert second["steps_run"] == 3 and second["step"] == 6
    a = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(straight, 6))
    b = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(split, 6))
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, atol=1e-6, rtol=0, msg=key)
    for key in ("exp_avg", "exp_avg_sq"):
        for i, state in a["optimizer"]["state"].items():
            torch.testing.assert_close(b["optimizer"]["state"][i][key], state[key], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        b["ranks"][0]["queue"]["queue"], a["ranks"][0]["queue"]["queue"], atol=1e-6, rtol=0
    )
    assert (a["epoch"], a["batch"]) == (b["epoch"], b["batch"]) == (0, 6)
    # The metrics of both halves form one curve equal to the straight run's.
    torch.testing.assert_close(
        torch.tensor([r["loss"] for r in metrics(split)]),
        torch.tensor([r["loss"] for r in metrics(straight)]),
        atol=1e-5,
        rtol=0,
    )


def test_resume_none_refuses_an_existing_run(tmp_path):
    from seer.config import ConfigError

    train(small_cfg(tmp_path, "train.max_steps=1", "train.export_backbone=false"))
    with pytest.raises(ConfigError, match="already holds checkpoints .* resume=auto"):
        train(small_cfg(tmp_path, "train.max_steps=1", "resume=none"))


def test_checkpoints_are_pruned_and_fall_back_when_unreadable(tmp_path):
    train(
        small_cfg(
            tmp_path,
            "train.max_steps=4",
            "train.checkpoint_every=1",
            "train.keep_last=2",
            "train.export_backbone=false",
        )
    )
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000003.pt", "step_00000004.pt"]  # no temporary files left
    ckpt_io.checkpoint_path(tmp_path, 4).write_bytes(b"half a checkpoint")
    with pytest.warns(UserWarning, match="unreadable"):
        path, state = ckpt_io.latest_checkpoint(tmp_path)
    assert path.name == "step_00000003.pt" and state["step"] == 3


# ------------------------------------------------------------------------ non-finite


def _poison(trainer: Trainer) -> None:
    with torch.no_grad():
        trainer.raw.prototypes.heads[0].weight[0, 0] = float("nan")


def test_nonfinite_loss_stops_with_step_and_checkpoint(tmp_path):
    cfg = small_cfg(tmp_path, "train.max_steps=3", "train.export_backbone=false")
    trainer = Trainer(cfg)
    _poison(trainer)
    with pytest.raises(
        NonFiniteLoss, match=r"at step 0 .*last good checkpoint: none written yet.*skip_nonfinite"
    ):
        trainer.fit()


def test_nonfinite_loss_skipped_when_asked(tmp_path):
    cfg = small_cfg(tmp_path, "train.max_steps=2", "train.skip_nonfinite=true", "train.export_backbone=false")
    trainer = Trainer(cfg)
    _poison(trainer)
    summary = trainer.fit()
    assert summary["nonfinite_steps"] == 2 and summary["step"] == 2


# ------------------------------------------------------------------------ export


def test_exported_backbone_loads_in_timm_and_load_backbone(tmp_path):
    train(small_cfg(tmp_path, "train.max_steps=2"))
    meta = json.loads((tmp_path / "backbone.json").read_text())
    assert meta["arch"] == "regnetx_002" and meta["timm_kwargs"] == {"downsample": "avg"}
    via_timm = timm.create_model(
        "regnetx_002",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "backbone.pt")),
        num_classes=0,
        downsample="avg",
    ).eval()
    from_export, cfg = ckpt_io.load_backbone(tmp_path / "backbone.pt")
    from_ckpt, cfg2 = ckpt_io.load_backbone(ckpt_io.checkpoint_path(tmp_path, 2), arch="regnetx_002")
    assert cfg["model"]["arch"] == cfg2["model"]["arch"] == "regnetx_002"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = via_timm(x)
        assert ref.shape == (3, 368)
        torch.testing.assert_close(from_export(x), ref)
        torch.testing.assert_close(from_ckpt(x), ref)
        # The trained weights, not timm's initialization.
        assert not torch.allclose(build_backbone("regnetx_002", downsample="avg").eval()(x), ref)


def test_load_backbone_rejects_foreign_files(tmp_path):
    train(small_cfg(tmp_path, "train.max_steps=1"))
    ckpt = ckpt_io.checkpoint_path(tmp_path, 1)
    with pytest.raises(ValueError, match="holds a 'regnetx_002' backbone, not the requested 'regnety_040'"):
        ckpt_io.load_backbone(ckpt, arch="regnety_040")
    bare = tmp_path / "bare.pt"
    torch.save(build_backbone("regnetx_004").state_dict(), bare)
    with pytest.raises(ValueError, match="without bare.json .* pass arch="):
        ckpt_io.load_backbone(bare)
    with pytest.raises(ValueError, match="do not match the architecture: .* missing"):
        ckpt_io.load_backbone(bare, arch="regnetx_002")
    junk = tmp_path / "junk.pt"
    torch.save({"weights": [1, 2, 3]}, junk)
    with pytest.raises(ValueError, match="neither a seer training checkpoint nor a backbone state dict"):
        ckpt_io.load_backbone(junk)
    with pytest.raises(FileNotFoundError):
        ckpt_io.load_backbone(tmp_path / "nothing.pt")


def test_export_command(tmp_path, capsys):
    train(small_cfg(tmp_path, "train.max_steps=1", "train.export_backbone=false"))
    ckpt_io.main(["export", str(tmp_path), str(tmp_path / "out" / "trunk.pt")])
    assert "pretrained_cfg_overlay" in capsys.readouterr().out
    model, _ = ckpt_io.load_backbone(tmp_path / "out" / "trunk.pt")
    assert model.num_features == 368


# ------------------------------------------------------------------------ two processes

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from seer import distributed as D
    from seer.config import load_config
    from seer.train import Trainer

    def run(out, overrides):
        trainer = Trainer(load_config(None, overrides))
        summary = trainer.fit()
        full = get_model_state_dict(trainer.raw, options=StateDictOptions(full_state_dict=True))
        names = [n for n, _ in trainer.raw.named_parameters()]
        flat = torch.cat([full[n].detach().float().flatten().cpu() for n in names])
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        proto = trainer.raw.prototypes.heads[0].weight
        seen = {}
        def record(module, inputs, output):
            seen["trunk"] = f"{output.dtype} {module.weight.dtype}"

        trainer.raw.backbone.stem.conv.register_forward_hook(record)
        with torch.no_grad(), trainer._autocast():
            _, scores = trainer.model([torch.randn(4, 3, 32, 32)])
        if dist.get_rank() == 0:
            json.dump({
                "max_diff": max(float((g - gathered[0]).abs().max()) for g in gathered),
                "n_params": flat.numel(),
                "loss": summary["final_loss"],
                "step": summary["step"],
                "world": dist.get_world_size(),
                "mode": trainer.info.mode,
                "proto_dtype": str(getattr(proto, "_local_tensor", proto).dtype),
                "scores_dtype": str(scores.dtype),
                "trunk_dtype": seen["trunk"],
                "optimizer": type(trainer.optimizer).__name__,
            }, open(out, "w"))
    # As seer-train ends: the trainer (and with it the model's process groups) is dropped
    # before the group is destroyed, so no gloo thread outlives it.
    run(sys.argv[1], sys.argv[2:])
    D.teardown()
    """
)


def _torchrun(tmp_path: Path, *overrides: str) -> dict:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "result.json"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(script), str(out), f"run_dir={tmp_path / 'run'}", *SMALL, "train.max_steps=3",
        "swav.freeze_prototypes_steps=1", "swav.queue_length=64", "swav.queue_start_epoch=0",
        "train.dist_timeout_s=120", *overrides,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "terminate called" not in proc.stderr, proc.stderr[-4000:]
    return json.loads(out.read_text())


# The fused head computes its loss inside the prototypes' forward (FSDP gathers the weight
# there, DDP sees it used); the composed head scores every crop. Both train under both.
HEADS = ["swav.head=fused", "swav.head=composed"]


@pytest.mark.parametrize("head", HEADS)
def test_ddp_with_sharded_lars_two_processes(tmp_path, head):
    result = _torchrun(tmp_path, "optimizer.name=lars", "optimizer.lr=0.5", "optimizer.sharded=true", head)
    assert (
        result["world"] == 2 and result["mode"] == "ddp" and result["optimizer"] == "ZeroRedundancyOptimizer"
    )
    assert result["step"] == 3 and math.isfinite(result["loss"])
    assert result["max_diff"] == 0.0
    # The checkpoint holds both ranks' queues and random states.
    state = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(tmp_path / "run", 3))
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["queue"]["queue"], state["ranks"][1]["queue"]["queue"])


@pytest.mark.parametrize("head", HEADS)
def test_fsdp2_two_processes(tmp_path, head):
    result = _torchrun(
        tmp_path, "distributed=fsdp", "train.precision=bf16", "optimizer.name=lars", "optimizer.lr=0.5", head
    )
    assert result["world"] == 2 and result["mode"] == "fsdp" and result["step"] == 3
    assert math.isfinite(result["loss"]) and result["max_diff"] == 0.0
    # bf16 mixed precision in the trunk, the prototypes (and so the loss) in fp32.
    assert result["trunk_dtype"] == "torch.bfloat16 torch.bfloat16"  # a convolution and its gathered weight
    assert result["proto_dtype"] == result["scores_dtype"] == "torch.float32"
    state = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(tmp_path / "run", 3))
    assert state["model"]["prototypes.heads.0.weight"].shape == (64, 128)  # saved unsharded


def test_two_ranks_refuse_a_different_run_alike(tmp_path):
    """Rank 0 decides and every rank hears it: both refuse, in one line each, at once (no
    rank waits in a collective for a peer that left), and run_dir is untouched. The ranks
    are started as torchrun would start them, but each runs to its own end (torchrun's
    agent would stop the second rank as soon as the first exits)."""
    import socket

    run = tmp_path / "run"
    train(small_cfg(run, "train.max_steps=1", "train.export_backbone=false"))
    before = snapshot(run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "seer.train", f"run_dir={run}", *SMALL, "train.max_steps=2"]
    cmd += ["model.n_prototypes=32", "train.dist_timeout_s=60"]
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    results = [p.communicate(timeout=240) for p in procs]
    for rank, (proc, (out, err)) in enumerate(zip(procs, results, strict=True)):
        assert proc.returncode == 2, f"rank {rank}: exit {proc.returncode}\n{err[-3000:]}"
        line = _error_line(err)
        assert "holds a run with other settings" in line and "model.n_prototypes 64 -> 32" in line
        assert "resumed" not in out and "failed at step" not in err
    assert snapshot(run) == before


# ------------------------------------------------------------------------ options


def test_cpu_bf16_caps_onednn_below_amx_unless_the_user_chose(monkeypatch):
    # tests/conftest.py sets the same cap for this process (oneDNN reads it once, early).
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == ONEDNN_ISA_CAP
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert cap_onednn_isa() and os.environ["ONEDNN_MAX_CPU_ISA"] == ONEDNN_ISA_CAP
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cap_onednn_isa() and os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"


@pytest.mark.parametrize(
    "options",
    [
        ("train.precision=bf16",),
        ("train.precision=fp16",),  # GradScaler path (CPU GradScaler)
        ("train.grad_checkpointing=true", "train.channels_last=false"),
        ("optimizer.name=sgd", "optimizer.lr=0.1", "optimizer.grad_clip=1.0", "optimizer.warmup_steps=1"),
        ("distributed=fsdp",),  # a one-process group: the FSDP2 code path without spawning
        ("optimizer.sharded=true", "optimizer.name=lars"),  # one process: plain LARS, warned
    ],
    ids=["bf16", "fp16", "checkpointing", "sgd-clip", "fsdp-1proc", "sharded-1proc"],
)
def test_training_options_run(tmp_path, options):
    summary = train(small_cfg(tmp_path, "train.max_steps=2", "train.export_backbone=false", *options))
    assert summary["step"] == 2 and math.isfinite(summary["final_loss"])
    state = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(tmp_path, 2))
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    if "train.precision=fp16" in options:
        assert state["scaler"] is not None and state["scaler"]["scale"] > 0


# ------------------------------------------------------------------------ throughput


def test_summary_rate_is_the_steady_state_of_the_metrics(tmp_path, monkeypatch):
    """Slow checkpoint writes (0.5 s each, one per step) and a slow first step do not enter
    the summary's images/s: it is the metrics' steady-state rate, over the steps' time."""
    durations = []
    real_step, real_save = Trainer.train_step, ckpt_io.atomic_save

    def timed_step(self, *args):
        t = time.perf_counter()
        if self.step == 0:
            time.sleep(0.5)  # a compiling first step
        out = real_step(self, *args)
        durations.append(time.perf_counter() - t)
        return out

    def slow_save(*args):
        time.sleep(0.5)
        return real_save(*args)

    monkeypatch.setattr(Trainer, "train_step", timed_step)
    monkeypatch.setattr(ckpt_io, "atomic_save", slow_save)
    run = tmp_path / "run"
    overrides = ["train.max_steps=7", "train.checkpoint_every=1", "train.throughput_warmup_steps=2"]
    summary = train(small_cfg(run, *overrides, "train.export_backbone=false", "train.peak_tflops=1.0"))
    records = metrics(run)
    steady = [r for r in records if not r["warmup"]]
    assert [r["warmup"] for r in records] == [True, True] + [False] * 5
    assert summary["steady_steps"] == 5 and summary["warmup_steps"] == 2
    assert summary["images_per_s"] == pytest.approx(records[-1]["steady_img_s"], rel=1e-12)
    # Each record is one step here: the steady rate is the images over the steps' times.
    assert summary["images_per_s"] == pytest.approx(16 * 5 / sum(16 / r["img_s"] for r in steady), rel=1e-6)
    # Checkpoints and warm-up are timed apart; one leaked checkpoint would add 0.5 s here.
    assert summary["checkpoint_writes"] == 7 and summary["checkpoint_s"] >= 7 * 0.5
    assert summary["warmup_s"] >= sum(durations[:2]) > 0.5
    assert sum(durations[2:]) <= summary["steady_s"] < sum(durations[2:]) + 0.25
    assert summary["images_per_s"] > 2 * 16 * 7 / summary["wall_s"]
    parts = summary["warmup_s"] + summary["steady_s"] + summary["checkpoint_s"] + summary["other_s"]
    assert parts == pytest.approx(summary["wall_s"], rel=1e-6)
    # FLOPs: counted on the meta device; the peak given by train.peak_tflops (no CPU peak).
    assert summary["tflop_per_image"] > 0 and summary["peak_tflops"] == 1.0
    assert summary["peak_fraction"] == pytest.approx(summary["achieved_tflops"])
    assert summary["achieved_tflops"] == pytest.approx(summary["tflop_per_image"] * summary["images_per_s"])
    assert set(summary["time_s"]) >= {"forward", "backward"} and set(summary["warmup_time_s"]) >= {"forward"}


def test_summary_of_a_session_shorter_than_the_warmup(tmp_path):
    summary = train(small_cfg(tmp_path, "train.max_steps=2", "train.export_backbone=false"))
    assert summary["steady_steps"] == 0 and summary["warmup_steps"] == 2
    assert summary["images_per_s"] > 0 and summary["steady_s"] == 0
    assert set(summary["time_s"]) >= {"forward", "backward"} and summary["peak_fraction"] is None
    assert "warm-up only" in format_summary({**summary, "proto_usage": 0.5, "proto_spread": 0.1})


def test_regional_compile_compiles_each_block_once_per_shape():
    """train.compile=regional: every stage block compiled in place, blocks of one shape
    sharing a graph (fewer graphs than blocks x resolutions), outputs as eager's."""
    import copy

    from torch._dynamo.utils import counters

    from seer.models import compile_blocks

    torch.manual_seed(0)
    trunk = build_backbone("regnetx_002", downsample="avg").eval()
    eager = copy.deepcopy(trunk)
    counters.clear()
    assert compile_blocks(trunk, 2) == 13
    x, small = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(trunk(x), eager(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(trunk(small), eager(small), rtol=1e-4, atol=1e-5)
    assert 0 < counters["stats"]["unique_graphs"] < 13 * 2
    assert trunk.stem._compiled_call_impl is None and trunk.s3.b2._compiled_call_impl is not None
    with pytest.raises(ValueError, match="train.compile=regional"):
        compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)), 1)


# ------------------------------------------------------------------------ one run per run_dir


def _photos(folder: Path, n: int, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """`n` JPEGs of smooth random colour fields (photo-like: they decode and compress)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        field = torch.rand(1, 3, 3, 4, generator=gen)
        image = torch.nn.functional.interpolate(field, size=size[::-1], mode="bicubic", align_corners=False)
        array = (image[0].clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / f"photo_{i:03d}.jpg", quality=90)
    return folder


def snapshot(run_dir: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under run_dir with its size, mtime and contents: what "nothing written" means."""
    return {
        str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def _main(capsys, *args: str) -> tuple[int, str, str]:
    from seer.train import main

    capsys.readouterr()  # what came before is not this command's
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("seer-train: error: "), err
    return lines[0]


def test_a_run_with_other_settings_is_refused_before_anything_is_written(tmp_path, capsys):
    """The issue's first try: the default run_dir held the digits run, and a folder run
    went on training its weights. Now: one line naming the keys, exit 2, nothing touched.
    Extending the run or lowering its learning rate is still a plain resume."""
    run = tmp_path / "run"
    train(small_cfg(run, "train.max_steps=2"))
    before = snapshot(run)
    photos = _photos(tmp_path / "photos", 20)
    rc, out, err = _main(
        capsys, f"run_dir={run}", *SMALL, "train.max_steps=4", "data.source=folder", f"data.path={photos}"
    )
    line = _error_line(err)
    assert rc == 2 and out == ""
    assert f"data.source 'digits' -> 'folder', data.path '' -> '{photos}'" in line
    assert "step_00000002.pt" in line and "--force-resume" in line and "--new-run" in line
    rc, _, err = _main(capsys, f"run_dir={run}", *SMALL, "train.max_steps=4", "model.n_prototypes=32")
    assert rc == 2 and "model.n_prototypes 64 -> 32" in _error_line(err)  # not a load_state_dict traceback
    assert snapshot(run) == before
    # A longer schedule, another learning rate, other logging: the same run, continued.
    rc, out, err = _main(
        capsys, f"run_dir={run}", *SMALL, "train.max_steps=3", "optimizer.lr=1e-3", "train.log_every=2"
    )
    assert rc == 0 and f"resumed from {run}/checkpoints/step_00000002.pt: step 2" in out, err
    assert json.loads((run / "summary.json").read_text())["step"] == 3


def test_force_resume_and_new_run(tmp_path, capsys):
    run = tmp_path / "run"
    train(small_cfg(run, "train.max_steps=2", "train.export_backbone=false"))
    rc, out, err = _main(
        capsys, f"run_dir={run}", *SMALL, "train.max_steps=3", "augment.flip=0.5", "--force-resume"
    )
    assert rc == 0 and "--force-resume: continuing with new settings: augment.flip 0.0 -> 0.5" in out, err
    assert ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(run, 3))["config"]["augment"]["flip"] == 0.5
    before = snapshot(run)
    # Forcing cannot bridge a change of shape: one line naming the weights, nothing written.
    rc, out, err = _main(
        capsys, f"run_dir={run}", *SMALL, "model.n_prototypes=32", "train.max_steps=4", "--force-resume"
    )
    assert rc == 2 and "prototypes.heads.0.weight (64, 128) -> (32, 128)" in _error_line(err)
    # --new-run: a different run goes beside it; run again, it continues there.
    other = ["augment.flip=0.5", "model.n_prototypes=32", "train.export_backbone=false"]
    rc, out, err = _main(capsys, f"run_dir={run}", *SMALL, *other, "train.max_steps=1", "--new-run")
    assert rc == 0 and f"run_dir {run} holds a different run: this one is in {run}-2" in out, err
    rc, out, err = _main(capsys, f"run_dir={run}", *SMALL, *other, "train.max_steps=2", "--new-run")
    assert rc == 0 and f"resumed from {run}-2/checkpoints/step_00000001.pt" in out, err
    rc, out, err = _main(
        capsys, f"run_dir={run}", *SMALL, "model.n_prototypes=16", "train.max_steps=1", "--new-run"
    )
    assert rc == 0 and f"this one is in {run}-3" in out, err
    assert snapshot(run) == before
    assert [p.name for p in ckpt_io.list_checkpoints(f"{run}-2")] == ["step_00000001.pt", "step_00000002.pt"]
    assert ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(f"{run}-3", 1))["config"]["run_dir"] == f"{run}-3"
    with pytest.raises(SystemExit) as exit_:
        _main(capsys, *SMALL, "--new-run", "--force-resume")
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_a_finished_run_run_again_says_so_and_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    train(small_cfg(run, "train.max_steps=2"))
    before = snapshot(run)
    rc, out, err = _main(capsys, f"run_dir={run}", *SMALL, "train.max_steps=2", "train.log_every=5")
    assert rc == 0, err
    assert f"{run} is already at step 2 of 2 (finished): nothing to train, nothing changed" in out
    assert "final loss" not in out  # no new summary either
    assert snapshot(run) == before  # config.yaml, summary.json, metrics, plot and export untouched


@pytest.mark.timeout(180)  # catches the hang: the run itself takes seconds
def test_resume_past_the_end_of_a_shrunk_folder_continues_at_the_next_epoch(tmp_path, capsys, monkeypatch):
    """The checkpoint stopped at batch 5 of epoch 0; the folder then lost half its images,
    leaving 3 batches per epoch. The resumed run says so and goes on at epoch 1, where it
    used to ask for batch 5 of a 3-batch epoch forever."""
    photos = _photos(tmp_path / "photos", 24, size=(24, 18))
    run = tmp_path / "run"
    args = [f"run_dir={run}", *SMALL, "train.batch_size=4", "data.source=folder", f"data.path={photos}"]
    args += ["data.image_size=16", "augment.global_size=16", "augment.local_size=8", "train.max_steps=8"]
    rc, _, err = _main(capsys, *args, "train.stop_at_step=5", "train.export_backbone=false")
    assert rc == 0, err
    state = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(run, 5))
    assert (state["epoch"], state["batch"]) == (0, 5)
    for jpeg in sorted(photos.iterdir())[::2]:
        jpeg.unlink()
    # A second guard besides the time limit: an epoch asked for over and over is the hang.
    from seer.data import FolderSource

    calls, original_epoch = [], FolderSource.epoch

    def counted(self, epoch, start):
        calls.append((epoch, start))
        assert len(calls) < 20, f"the data source was asked for an epoch {len(calls)} times: {calls[:5]}"
        return original_epoch(self, epoch, start)

    monkeypatch.setattr(FolderSource, "epoch", counted)
    rc, out, err = _main(capsys, *args)
    assert rc == 0, err
    assert (
        "batch 5 of epoch 0 lies past the end of this data's epoch (3 batches): continuing at epoch 1, batch 0"
        in out
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 8 and summary["steps_run"] == 3 and summary["epoch"] == 2
    assert calls[0] == (1, 0)


# ------------------------------------------------------------------------ what a user sees


def _line_by_line(text: str) -> list[str]:
    assert "\r" not in text, f"carriage returns (a progress bar) in a log file: {text[:500]!r}"
    return text.splitlines()


@pytest.mark.timeout(300)
def test_readme_folder_command_trains_with_the_photo_recipe_and_logs_line_by_line(tmp_path):
    """The README's folder command (`seer-train -c photos data.path=...`), small: 8
    photo-sized JPEGs, crops of 32 and 16 px, 4 steps, output sent to files. The banner names
    the recipe, a line comes every log_every steps, the summary is in stdout, nothing is
    a carriage-return bar, and stderr holds no traceback."""
    photos = _photos(tmp_path / "photos", 8, size=(320, 240))
    run = tmp_path / "runs" / "photos"
    cmd = [sys.executable, "-m", "seer.train", "-c", "photos", f"data.path={photos}", f"run_dir={run}"]
    cmd += ["data.image_size=48", "augment.global_size=32", "augment.local_size=16", "train.batch_size=4"]
    cmd += ["train.max_steps=4", "train.log_every=2", "train.threads=1", "data.num_workers=1"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(tmp_path / "out.log", "w") as out, open(tmp_path / "err.log", "w") as err:
        done = subprocess.run(cmd, stdout=out, stderr=err, env=env, timeout=280, cwd=tmp_path)
    stdout = _line_by_line((tmp_path / "out.log").read_text())
    stderr = _line_by_line((tmp_path / "err.log").read_text())
    assert done.returncode == 0, "\n".join(stderr[-40:])
    assert (
        stdout[0].startswith("seer-train: regnetx_002") and "folder" in stdout[0] and "8 files" in stdout[0]
    )
    assert stdout[1].startswith("seer-train: augment: SwAV photo recipe: random resized crops")
    assert "flip 0.5, colour jitter 0.8 at strength 1, grayscale 0.2, blur 0.5" in stdout[1]
    assert "ImageNet mean/std" in stdout[1]
    steps = [line for line in stdout if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["2/4", "4/4"] and all(
        "loss" in s and "images/s" in s for s in steps
    )
    assert any(line.startswith("final loss") for line in stdout)
    assert stdout[-1].startswith("skipped images 0")
    assert not any("Traceback" in line for line in stderr) and not any(
        "final loss" in line for line in stderr
    )
    assert (run / "summary.json").is_file() and (run / "backbone.pt").is_file()


def test_progress_bar_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    import seer.train as T

    monkeypatch.setattr(T, "_is_terminal", lambda stream: True)
    train(
        small_cfg(tmp_path / "a", "train.max_steps=2", "train.progress=true", "train.export_backbone=false")
    )
    out, err = capsys.readouterr()
    assert "step/s" in err or "it/s" in err or "2/2" in err  # tqdm's bar, on stderr
    assert not [line for line in out.splitlines() if line.startswith("step ")] and "final loss" in out
    # train.progress=false on a terminal: the plain lines.
    train(
        small_cfg(tmp_path / "b", "train.max_steps=2", "train.progress=false", "train.export_backbone=false")
    )
    out, err = capsys.readouterr()
    assert [line.split()[1] for line in out.splitlines() if line.startswith("step ")] == ["1/2", "2/2"]
    assert "\r" not in err


# ------------------------------------------------------------------------ install


BLOCK = textwrap.dedent(
    """
    import sys

    class Missing:
        # A [train] extra that is not installed: its modules cannot be found.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"timm", "sklearn", "matplotlib", "webdataset"}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Missing())
    from seer.cli import evaluate, train
    sys.exit((train if sys.argv[1] == "seer-train" else evaluate)(sys.argv[2:]))
    """
)


@pytest.mark.parametrize("program", ["seer-train", "seer-eval"])
def test_commands_name_the_extra_when_it_is_missing(program):
    """`pip install --no-build-isolation .` installs the kernels' dependencies only: the
    commands then say which extra to install, in one line, even for --help."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", BLOCK, program, "--help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == "", done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert (
        line.startswith(f"{program}: error:")
        and "missing: timm, scikit-learn, matplotlib, webdataset" in line
    )
    assert "pip install --no-build-isolation '.[train]'" in line
    # With the extra installed, the same entry point runs the command.
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; from seer.cli import {'train' if program == 'seer-train' else 'evaluate'} as m; sys.exit(m(['--help']))"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and f"usage: {program}" in done.stdout, done.stderr


def test_the_extra_and_the_entry_points_agree_with_pyproject():
    import tomllib

    from seer.cli import INSTALL, TRAIN_EXTRA

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = {re.split(r"[<>=\[ ]", r)[0] for r in project["optional-dependencies"]["train"]}
    assert extra == set(TRAIN_EXTRA.values())
    assert project["scripts"] == {"seer-train": "seer.cli:train", "seer-eval": "seer.cli:evaluate"}
    assert INSTALL in (ROOT / "README.md").read_text()


def test_help_documents_the_resume_flags_and_the_output(capsys):
    from seer.train import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--force-resume" in out and "--new-run" in out and "train.progress" in out

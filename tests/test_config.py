"""The trainer's configuration: YAML + key=value overrides, clear errors, shipped configs,
and the SEER models built on the meta device with their published sizes. Every mistake a
config can make ends the command in one line naming the key, exit status 2, with nothing
written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from seer.config import (
    Config,
    ConfigError,
    _flatten,
    from_dict,
    load_config,
    save_config,
    to_dict,
    valid_keys,
)
from seer.models import build_model, flops_per_image, parameter_counts
from seer.train import main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SHIPPED = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def test_defaults_are_the_default_yaml():
    """configs/default.yaml spells out the dataclass defaults (the tiny CPU run)."""
    # So `seer-train` and `make demo` (-c configs/default.yaml) are one run: a run_dir
    # holding either resumes with the other.
    assert to_dict(load_config(CONFIGS / "default.yaml")) == to_dict(Config())


def test_default_yaml_lists_every_key():
    """configs/default.yaml is the reference of the keys: every key of the config
    dataclasses is in it (a key added to seer/config.py and not to the file fails here)."""
    listed = list(_flatten(yaml.safe_load((CONFIGS / "default.yaml").read_text())))
    assert sorted(listed) == sorted(valid_keys()), (
        f"missing: {sorted(set(valid_keys()) - set(listed))}; unknown: {sorted(set(listed) - set(valid_keys()))}"
    )


def test_run_keys_are_what_a_run_is_not_how_long_or_how_fast():
    """A resume must agree on the model, SwAV, data and augmentation keys and the seed; a
    session may change the schedule's length, the optimizer, logging, checkpointing,
    precision and devices."""
    from seer.config import run_differences, run_keys

    keys = set(run_keys())
    assert {"seed", "model.arch", "model.n_prototypes", "data.source", "data.path", "data.image_size"} <= keys
    assert {"augment.mean", "augment.flip", "swav.temperature", "swav.queue_length"} <= keys
    assert all(k.split(".")[0] in ("model", "swav", "data", "augment", "seed") for k in keys)
    for key in ("train.epochs", "train.max_steps", "train.stop_at_step", "train.log_every", "train.progress"):
        assert key not in keys
    assert not any(k.startswith(("optimizer.", "train.")) for k in keys)
    assert not {"run_dir", "resume", "device", "distributed", "swav.backend", "data.num_workers"} & keys
    cfg = load_config(
        None, ["data.source=folder", "data.path=/my/images/", "train.epochs=90", "optimizer.lr=1e-4"]
    )
    saved = to_dict(load_config(None, ["data.source=folder", "data.path=/my/images"]))
    assert run_differences(saved, cfg) == []  # a longer run, a lower lr, the same folder
    saved["model"]["n_prototypes"], saved["data"]["source"] = 32, "digits"
    del saved["augment"]["crop_attempts"]  # a checkpoint older than a key: its default
    assert run_differences(saved, cfg) == [
        ("model.n_prototypes", 32, 64),
        ("data.source", "digits", "folder"),
    ]


def test_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "train.batch_size=16",
            "optimizer.lr=1e-3",
            "optimizer.sharded=true",
            "augment.global_scale=[0.2, 1]",
            "model.timm_kwargs={downsample: avg, drop_path_rate: 0.1}",
            "resume=none",
            "data.path=no",  # strings stay verbatim (YAML would read `no` as False)
            "distributed=fsdp",
        ],
    )
    assert cfg.train.batch_size == 16 and isinstance(cfg.train.batch_size, int)
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.sharded is True
    assert cfg.augment.global_scale == [0.2, 1.0] and all(
        isinstance(v, float) for v in cfg.augment.global_scale
    )
    assert cfg.model.timm_kwargs == {"downsample": "avg", "drop_path_rate": 0.1}
    assert cfg.resume == "none" and cfg.data.path == "no" and cfg.distributed == "fsdp"


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.batchsize'.*train\.batch_size"):
        load_config(None, ["train.batchsize=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'nope'.*run_dir.*train\.epochs"):
        load_config(None, ["nope=1"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["train.epochs"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.batch_size=abc", "train.batch_size' expects int, got 'abc'"),
        ("train.batch_size=1.5", "expects int, got 1.5"),
        ("train.batch_size=true", "expects int, got True"),
        ("optimizer.lr=fast", "optimizer.lr' expects float"),
        ("train.compile=1", "train.compile' expects bool or one of 'regional', got 1"),
        ("train.precision=fp8", "one of 'auto', 'fp32', 'bf16', 'fp16'"),
        ("augment.global_scale=[0.2, x]", r"augment.global_scale\[1\]' expects float"),
        ("model.timm_kwargs=[1]", "model.timm_kwargs' expects dict"),
    ],
)
def test_wrong_type_is_a_clear_error(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def test_value_checks():
    with pytest.raises(ConfigError, match="train.batch_size must be >= 1"):
        load_config(None, ["train.batch_size=0"])
    with pytest.raises(ConfigError, match="swav.backend must be"):
        load_config(None, ["swav.backend=fast"])
    with pytest.raises(ConfigError, match="data.epoch_size"):
        load_config(None, ["data.source=webdataset", "data.path=x.tar"])


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'train\.epochz'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_missing_data_path_is_a_clear_error(tmp_path, capsys):
    """Missing or empty data paths fail at startup with the path in the message."""
    from seer.train import train

    args = [f"run_dir={tmp_path / 'run'}", "data.source=folder", "train.progress=false"]
    with pytest.raises(ConfigError, match="data.path is required for data.source=folder"):
        train(load_config(None, args))
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=f"data.path '{missing}' does not exist"):
        train(load_config(None, [*args, f"data.path={missing}"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image files .* under data.path"):
        train(load_config(None, [*args, f"data.path={tmp_path / 'empty'}"]))
    with pytest.raises(ConfigError, match="do not exist"):
        train(
            load_config(
                None, ["data.source=webdataset", f"data.path={missing}-{{0..3}}.tar", "data.epoch_size=8"]
            )
        )
    # The command line turns them into a message and exit status 2, not a traceback.
    assert main([*args, f"data.path={missing}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train.batchsize=3"]) == 2
    assert "valid keys" in capsys.readouterr().err


def test_save_and_reload_roundtrip(tmp_path):
    cfg = load_config("seer_regnety_32gf", ["train.batch_size=8"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)
    assert "optimizer.sharded" in valid_keys() and "train.skip_nonfinite" in valid_keys()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    load_config(name)


# Published sizes, with the classifier of the published ImageNet model removed
# (num_features * 1000 + 1000 parameters): torchvision's regnet_y_32gf (145,046,770) and
# regnet_y_128gf (644,812,894), SEER's RegNetY-64GF (281M), and the RegNetY-256GF trunk
# (about 1.27B; SEER reports 1.3B). SEER-10B: VISSL's regnet10B widths; the paper says 10B
# for the whole network (trunk, 3-layer head and prototypes).
PUBLISHED = {
    "seer_regnety_32gf": (145_046_770, 3712, 0.001),
    "seer_regnety_64gf": (281_000_000, 4920, 0.01),
    "seer_regnety_128gf": (644_812_894, 7392, 0.001),
    "seer_regnety_256gf": (1_272_000_000 + 10444 * 1000 + 1000, 10444, 0.01),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_seer_models_match_published_sizes_on_meta(name):
    cfg = load_config(name)
    with torch.device("meta"):
        model = build_model(cfg.model)
    published, features, rtol = PUBLISHED[name]
    counts = parameter_counts(model)
    assert model.backbone.num_features == features
    assert counts["trunk"] + features * 1000 + 1000 == pytest.approx(published, rel=rtol)
    # The SEER head: [trunk, 8192, 8192, 256] linears without BN, then 16k prototypes.
    dims = [features, 8192, 8192, 256]
    head = sum(a * b + b for a, b in zip(dims[:-1], dims[1:], strict=True))
    assert counts["head"] == head and counts["prototypes"] == 16000 * 256
    assert all(p.is_meta for p in model.parameters())


def test_seer_10b_on_meta():
    cfg = load_config("seer_regnety_10b")
    with torch.device("meta"):
        model = build_model(cfg.model)
    counts = parameter_counts(model)
    assert model.backbone.num_features == 28280
    assert 9.0e9 < counts["trunk"] < 9.6e9 and 9.5e9 < counts["total"] < 10.5e9


def test_flops_per_image_match_published_counts():
    """torchvision's regnet_y_32gf is 32.28 GMACs at 224 px: the trunk's forward is twice
    that in FLOPs; the head and prototypes add their matmuls; training is 3x the forward."""
    cfg = load_config("seer_regnety_32gf").model
    head = 2 * (3712 * 8192 + 8192 * 8192 + 8192 * 256) + 2 * 256 * 16000
    big, small, both = (flops_per_image(cfg, sizes) for sizes in ([224], [96], [224, 96]))
    assert big / 3 == pytest.approx(2 * 32.28e9 + head, rel=0.01)
    # Crops add up, and a 96 px crop costs about (96/224)^2 of a 224 px one.
    assert both == pytest.approx(big + small, rel=1e-9)
    assert small / big == pytest.approx((96 / 224) ** 2, rel=0.1)


# ------------------------------------------------------------------------ one line, exit 2


def _one_line_error(capsys, run_dir: Path, *overrides: str) -> str:
    rc = main([f"run_dir={run_dir}", "train.progress=false", *overrides])
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seer-train: error: "), err
    assert not run_dir.exists(), f"{run_dir} was written: {list(run_dir.rglob('*'))}"
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_is_one_line(tmp_path, capsys):
    line = _one_line_error(capsys, tmp_path / "run", "device=cuda")
    assert "device=cuda" in line and "no usable CUDA device" in line


def test_an_unknown_architecture_is_one_line(tmp_path, capsys):
    line = _one_line_error(capsys, tmp_path / "run", "model.arch=regnetx_999")
    assert "model.arch 'regnetx_999' is not a timm model" in line
    line = _one_line_error(capsys, tmp_path / "run", "model.timm_kwargs={nope: 1}")
    assert "model.timm_kwargs {'nope': 1} with model.arch 'regnetx_002'" in line


def test_a_backend_the_device_cannot_run_is_one_line(tmp_path, capsys, monkeypatch):
    line = _one_line_error(capsys, tmp_path / "run", "device=cpu", "swav.backend=cuda")
    assert "swav.backend='cuda' cannot run this run's ops on cpu" in line and "available" in line
    monkeypatch.setenv("SEER_KERNELS_BACKEND", "cuda")
    line = _one_line_error(capsys, tmp_path / "run", "device=cpu")
    assert "SEER_KERNELS_BACKEND='cuda' cannot run this run's ops on cpu" in line


def test_the_backend_check_covers_the_ops_of_the_head_that_runs(monkeypatch):
    """swav.backend=cuda has no prototype_cross_entropy kernel: the composed head (the one
    `auto` picks there) runs with it, and only a fused head is refused. The GPU is pretended."""
    from seer.models import fused_head
    from seer.train import check_backend
    from seer_kernels import _backend

    usable = _backend._usable
    monkeypatch.setattr(_backend, "_usable", lambda name, dt, op="": usable(name, "cpu" if dt == "cuda" else dt, op) or (name == "cuda" and _backend._declared(name, op)))  # fmt: skip
    cuda = torch.device("cuda")
    cfg = load_config(None, ["swav.backend=cuda"])
    assert not fused_head("auto", "cuda", cuda)
    check_backend(cfg, cuda, fused=False)
    with pytest.raises(
        ConfigError, match="swav.backend='cuda' cannot run .* no kernel for prototype_cross_entropy"
    ):
        check_backend(cfg, cuda, fused=True)
    monkeypatch.setenv("SEER_KERNELS_BACKEND", "cuda")
    cfg = load_config(None, [])
    assert not fused_head("auto", "", cuda)
    check_backend(cfg, cuda, fused=False)
    with pytest.raises(
        ConfigError, match="SEER_KERNELS_BACKEND='cuda' cannot run .* prototype_cross_entropy"
    ):
        check_backend(cfg, cuda, fused=True)


def test_a_folder_without_a_readable_image_is_one_line(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    for i in range(3):
        (tmp_path / "images" / f"{i}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    line = _one_line_error(
        capsys,
        tmp_path / "run",
        "data.source=folder",
        f"data.path={tmp_path / 'images'}",
        "train.batch_size=2",
    )
    assert f"data.path '{tmp_path / 'images'}' holds no readable image: all 3" in line


def test_backend_variable_is_named_in_its_error_and_reported_by_info(monkeypatch):
    import seer_kernels as sk
    from seer_kernels import info

    monkeypatch.setenv("SEER_KERNELS_BACKEND", "foo")
    with pytest.raises(
        ValueError, match=r"SEER_KERNELS_BACKEND='foo': not a backend; valid values: reference, cpu"
    ):
        sk.sinkhorn(torch.rand(4, 3))
    lines = info.report()  # reports the bad value instead of raising
    assert any(line.startswith("SEER_KERNELS_BACKEND") and "'foo': NOT A BACKEND" in line for line in lines)
    assert any(line.startswith("cpu  backends") and "(default: " in line for line in lines)
    monkeypatch.setenv("SEER_KERNELS_BACKEND", "reference")
    assert any("'reference': calls without backend= run reference" in line for line in info.report())
    # A usable backend some op has no kernel for says which calls raise (the GPU pretended).
    available = info._backend.available_backends
    monkeypatch.setattr(info._backend, "available_backends", lambda d, op="": [*available(d, op), "cuda"])
    monkeypatch.setenv("SEER_KERNELS_BACKEND", "cuda")
    assert info.override().endswith(
        "prototype_cross_entropy has no cuda kernel: those calls raise RuntimeError"
    )
    monkeypatch.setattr(info._backend, "available_backends", available)
    monkeypatch.delenv("SEER_KERNELS_BACKEND")
    assert any(line.startswith("SEER_KERNELS_BACKEND") and "unset" in line for line in info.report())
    # The command itself, as a user runs it.
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "SEER_KERNELS_BACKEND": "foo", "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "seer_kernels.info"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "SEER_KERNELS_BACKEND 'foo': NOT A BACKEND" in done.stdout, done.stderr

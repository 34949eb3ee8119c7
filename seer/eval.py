"""seer-eval: how good are the frozen features of a SEER/SwAV trunk, next to the baselines?

    seer-eval runs/default                      # the digits, after `seer-train` (make demo)
    seer-eval runs/default/backbone.pt --fractions 0.01 0.1 1 --draws 5
    seer-eval run/checkpoints/step_00001000.pt --data /data/labelled --test-data /data/labelled-val
    seer-eval backbone.pt --train-list train.txt --test-list test.txt --root /data --device cuda
    python -m seer.eval ...                      # the same

Features are the globally average-pooled trunk output, computed once per feature set. On them:
a linear probe (standardized features, L-BFGS, weight decay chosen on held-out training labels)
with 1%, 10% and 100% of the training labels (per-class draws, several seeds, mean ± std) and a
weighted k-NN (cosine, k=20, T=0.07). The same splits and label draws score the baselines: the
same architecture randomly initialized, as initialized and with its BatchNorm statistics
re-estimated on the training images, and the raw pixels. The run folder receives eval.md (the
table, also printed), eval.json and eval.png. docs/evaluation.md explains how to read them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seer.evaluation.data import (
    DataError,
    EvalData,
    Preprocess,
    digits_data,
    folder_data,
    split_files_data,
)
from seer.evaluation.lowshot import LabelFractionError
from seer.evaluation.probe import DEFAULT_WEIGHT_DECAYS
from seer.evaluation.protocol import Protocol
from seer.evaluation.report import EvalReport, markdown_table, write_report
from seer.evaluation.runner import BASELINES, Extraction, run_evaluation

PROG = "seer-eval"


class UsageError(ValueError):
    """A command line that cannot work; reported as `seer-eval: error: ...`, exit status 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Linear probe, low-shot and k-NN evaluation of a trunk's frozen features, with "
        "random-init and raw-pixel baselines on the same splits (see docs/evaluation.md).",
    )
    add = parser.add_argument
    add(
        "checkpoint",
        type=Path,
        help="a run folder (its newest checkpoints/step_*.pt, else backbone.pt), a training "
        "checkpoint, or an exported backbone .pt",
    )
    data = parser.add_argument_group("data (default: the embedded digits, fixed 1258/539 split)").add_argument
    data(
        "--data", default="digits", metavar="digits|FOLDER", help="a labelled folder: one subfolder per class"
    )
    data("--test-data", type=Path, metavar="FOLDER", help="labelled folder used as the test split of --data")
    data(
        "--test-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="test share of --data when there is no --test-data (per class, fixed seed; default 0.2)",
    )
    data(
        "--train-list", type=Path, metavar="FILE", help="split file: 'path label' lines, or a .csv path,label"
    )
    data("--test-list", type=Path, metavar="FILE", help="split file of the test images, same format")
    data(
        "--root",
        type=Path,
        metavar="DIR",
        help="base of relative paths in split files (default: their folder)",
    )
    data(
        "--image-size", type=int, metavar="PX", help="decode size (default: the checkpoint's data.image_size)"
    )
    data(
        "--crop-size",
        type=int,
        metavar="PX",
        help="centre crop (default: the checkpoint's augment.global_size)",
    )

    model = parser.add_argument_group("model").add_argument
    model(
        "--arch",
        metavar="NAME",
        help="expected architecture (a checkpoint of another is an error); needed for a bare state dict",
    )
    model(
        "--timm-kwargs",
        type=json.loads,
        default={},
        metavar="JSON",
        help='timm.create_model options for a bare state dict, e.g. \'{"downsample": "avg"}\'',
    )

    proto = parser.add_argument_group("protocol").add_argument
    proto(
        "--fractions",
        type=float,
        nargs="+",
        default=list(Protocol.fractions),
        metavar="F",
        help="label fractions of the linear probe (default: 0.01 0.1 1)",
    )
    proto(
        "--draws",
        type=int,
        default=Protocol.draws,
        metavar="N",
        help="label draws per fraction below 1 (default: %(default)s)",
    )
    proto(
        "--seed",
        type=int,
        default=Protocol.seed,
        metavar="N",
        help="seeds the draws, the folds and the random init (default: %(default)s)",
    )
    proto("--knn-k", type=int, default=Protocol.knn_k, metavar="K", help="default: %(default)s")
    proto(
        "--knn-temperature",
        type=float,
        default=Protocol.knn_temperature,
        metavar="T",
        help="default: %(default)s",
    )
    proto(
        "--weight-decays",
        type=float,
        nargs="+",
        default=list(DEFAULT_WEIGHT_DECAYS),
        metavar="WD",
        help="the probe's weight-decay sweep (default: 1e-4 1e-3 1e-2 0.1 1)",
    )
    proto(
        "--folds",
        type=int,
        default=Protocol.folds,
        metavar="N",
        help="the held-out part for the sweep is 1/N of the labels (default: %(default)s)",
    )
    proto(
        "--baselines",
        nargs="*",
        choices=BASELINES,
        default=list(BASELINES),
        metavar="NAME",
        help="of random, random-bn, pixels (default: all; the flag alone: none)",
    )

    run = parser.add_argument_group("run").add_argument
    run("--out", type=Path, metavar="DIR", help="output folder (default: the checkpoint's run folder)")
    run("--device", default="auto", metavar="DEV", help="auto, cpu, cuda or cuda:N (default: auto)")
    run("--batch-size", type=int, default=256, metavar="N", help="default: %(default)s")
    run("--workers", type=int, default=0, metavar="N", help="DataLoader workers for image files (default: 0)")
    run("--amp", action="store_true", help="bf16 autocast for feature extraction on a GPU")
    run(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: the checkpoint's train.threads; 0: torch's default)",
    )
    run("--no-progress", action="store_true", help="no progress bars or per-set lines")
    return parser.parse_args(argv)


def make_protocol(args: argparse.Namespace) -> Protocol:
    """The protocol of the command line, every knob checked before anything is loaded."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if any(not 0 < f <= 1 for f in args.fractions):
        raise UsageError(f"--fractions must lie in (0, 1], got {args.fractions}")
    if any(wd <= 0 for wd in args.weight_decays):
        raise UsageError(f"--weight-decays must be positive, got {args.weight_decays}")
    if args.knn_k < 1 or args.knn_temperature <= 0:
        raise UsageError(
            f"--knn-k must be >= 1 and --knn-temperature > 0, got {args.knn_k}, {args.knn_temperature}"
        )
    try:
        return Protocol(
            fractions=tuple(args.fractions),
            draws=args.draws,
            seed=args.seed,
            knn_k=args.knn_k,
            knn_temperature=args.knn_temperature,
            weight_decays=tuple(args.weight_decays),
            folds=args.folds,
        )
    except ValueError as error:
        raise UsageError(str(error)) from error


def resolve_checkpoint(path: Path) -> tuple[Path, Path]:
    """(file to load, run folder) for a run folder, a training checkpoint or an exported backbone."""
    from seer.checkpoint import list_checkpoints

    if path.is_dir():
        found = list_checkpoints(path)
        if found:
            return found[-1], path
        if (path / "backbone.pt").is_file():
            return path / "backbone.pt", path
        raise UsageError(f"run folder {path} holds neither checkpoints/step_*.pt nor backbone.pt")
    if not path.is_file():
        raise UsageError(f"no checkpoint, backbone file or run folder at {path}")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path, run_dir


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA GPU")
    return device


def load_data(args: argparse.Namespace, preprocess: Preprocess) -> EvalData:
    if (args.train_list is None) != (args.test_list is None):
        raise UsageError("--train-list and --test-list go together")
    if args.train_list is not None:
        if args.data != "digits" or args.test_data is not None:
            raise UsageError("give either split files or --data/--test-data, not both")
        return split_files_data(args.train_list, args.test_list, preprocess, root=args.root)
    if args.data == "digits":
        if args.test_data is not None:
            raise UsageError("--test-data needs --data FOLDER (the digits have their own test split)")
        return digits_data(preprocess)
    return folder_data(
        Path(args.data),
        preprocess,
        test_root=args.test_data,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )


def random_trunk_builder(config: dict[str, Any], args: argparse.Namespace) -> Callable[[], nn.Module]:
    """Builds the checkpoint's architecture freshly initialized (the caller seeds torch)."""
    from seer.models import build_backbone

    model_cfg = config.get("model") or {}
    arch = model_cfg.get("arch") or args.arch
    kwargs = dict(model_cfg.get("timm_kwargs", {})) if model_cfg else dict(args.timm_kwargs)
    return lambda: build_backbone(arch, **kwargs).eval()


def evaluate(args: argparse.Namespace) -> tuple[EvalReport, dict[str, Path]]:
    from seer.checkpoint import load_backbone

    start = time.perf_counter()
    protocol = make_protocol(args)
    device = resolve_device(args.device)
    path, run_dir = resolve_checkpoint(args.checkpoint)
    try:
        trunk, config = load_backbone(path, arch=args.arch, **args.timm_kwargs)
    except ValueError as error:  # another architecture, mismatching weights, not a checkpoint
        raise UsageError(str(error)) from error
    threads = args.threads if args.threads is not None else (config.get("train") or {}).get("threads", 0)
    if threads:
        torch.set_num_threads(threads)
    preprocess = Preprocess.from_config(config, args.image_size, args.crop_size)
    data = load_data(args, preprocess)
    extraction = Extraction(args.batch_size, str(device), args.workers, args.amp, not args.no_progress)
    report = run_evaluation(
        data,
        protocol,
        trunk,
        random_trunk_builder(config, args),
        baselines=args.baselines,
        extraction=extraction,
        source=str(path),
        ssl_name="SwAV trunk",
    )
    report.seconds = time.perf_counter() - start
    report.extra = {
        "arch": (config.get("model") or {}).get("arch") or args.arch,
        "preprocess": dataclasses.asdict(preprocess),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    return report, write_report(report, args.out or run_dir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report, paths = evaluate(args)
    except (UsageError, DataError, LabelFractionError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    print(
        f"\n{PROG}: {report.source} ({report.extra['arch']}) on {report.data['name']}, "
        f"{report.seconds:.0f} s on {report.extra['device']}\n"
    )
    print(markdown_table(report))
    print(f"{PROG}: wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

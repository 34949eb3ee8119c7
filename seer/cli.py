"""The `seer-train` and `seer-eval` commands.

The trainer needs the `[train]` extra (timm, torchvision, scikit-learn, matplotlib,
webdataset, pillow), which a plain `pip install .` of the kernels leaves out: without it
the commands say what to install, in one line, instead of a ModuleNotFoundError.
"""

from __future__ import annotations

import importlib.util
import sys

# Import name -> the distribution pip installs it from, as listed under [train] in pyproject.toml.
TRAIN_EXTRA = {
    "timm": "timm",
    "torchvision": "torchvision",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "webdataset": "webdataset",
    "PIL": "pillow",
}
INSTALL = "pip install --no-build-isolation '.[train]'"


def missing_train_extra() -> list[str]:
    """Distributions of the [train] extra whose modules cannot be imported here."""
    missing = []
    for module, distribution in TRAIN_EXTRA.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(distribution)
    return missing


def _require(program: str) -> bool:
    missing = missing_train_extra()
    if missing:
        print(
            f"{program}: error: the trainer's dependencies are not installed (missing: {', '.join(missing)}); "
            f"install the [train] extra: {INSTALL} (from a clone of seer-kernels)",
            file=sys.stderr,
        )
    return not missing


def train(argv: list[str] | None = None) -> int:
    if not _require("seer-train"):
        return 2
    from seer.train import main

    return main(argv)


def evaluate(argv: list[str] | None = None) -> int:
    if not _require("seer-eval"):
        return 2
    from seer.eval import main

    return main(argv)

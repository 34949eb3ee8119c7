"""Labelled evaluation data: the embedded digits, a labelled folder, or explicit split files.

Every source becomes an EvalData: a train and a test Dataset of (normalized CHW float image,
class id) pairs, their label tensors (known without decoding a single image) and the class names.
Images go through the trainer's own pipeline (seer.data: digits_images, decode_image) and then
Preprocess, the deterministic view of a training crop: centre crop to the global crop size and
the training normalization, all read from the checkpoint's config.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from seer.config import Config, from_dict
from seer.data import IMAGE_EXTENSIONS, UnreadableImage, decode_image, digits_images

DIGITS_TEST_FRACTION = 0.3
DIGITS_SPLIT_SEED = 0


class DataError(ValueError):
    """The evaluation data cannot be used as given; the message says what to change."""


@dataclass(frozen=True)
class EvalData:
    name: str
    train: Dataset
    test: Dataset
    train_labels: Tensor
    test_labels: Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.class_names) < 2:
            raise DataError(f"{self.name}: classification needs at least two classes, got {self.class_names}")
        missing = set(range(len(self.class_names))) - set(self.train_labels.tolist())
        if missing:
            names = ", ".join(self.class_names[c] for c in sorted(missing))
            raise DataError(f"{self.name}: no training image for class(es) {names}")
        if self.test_labels.numel() == 0:
            raise DataError(f"{self.name}: the test split is empty")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "train": int(self.train_labels.numel()),
            "test": int(self.test_labels.numel()),
            "classes": self.num_classes,
            "class_names": list(self.class_names),
        }


@dataclass(frozen=True)
class Preprocess:
    """Decoded image -> network input, as the trainer sees an un-augmented image.

    image_size: the side every image is decoded to (shorter side resized, centre crop), the
    trainer's data.image_size; crop_size: the centre crop fed to the trunk, the trainer's
    augment.global_size (224 out of 256 for the SEER configs, 32 out of 32 for the digits);
    mean / std: the trainer's normalization.
    """

    image_size: int = 32
    crop_size: int = 32
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    @classmethod
    def from_config(
        cls, config: dict[str, Any], image_size: int | None = None, crop_size: int | None = None
    ) -> Preprocess:
        """From a checkpoint's training config ({} gives the trainer's defaults), with overrides."""
        cfg: Config = from_dict(config) if config else Config()
        image = image_size or cfg.data.image_size
        crop = min(crop_size or cfg.augment.global_size, image)
        return cls(image, crop, tuple(cfg.augment.mean), tuple(cfg.augment.std))

    def __call__(self, images: Tensor) -> Tensor:
        """(..., 3, S, S) uint8 or float in [0, 1] -> normalized float, centre-cropped."""
        if images.dtype == torch.uint8:
            images = images.float().div(255.0)
        height, width = images.shape[-2:]
        top, left = (height - self.crop_size) // 2, (width - self.crop_size) // 2
        images = images[..., top : top + self.crop_size, left : left + self.crop_size]
        mean = torch.tensor(self.mean, dtype=images.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype).view(-1, 1, 1)
        return (images - mean) / std


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices: round(test_fraction * n_c) of each class c go to the test split.

    Written with numpy's PCG64 rather than scikit-learn's splitter so the split is fixed by this
    code alone, not by a library version.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        if len(members) < 2:
            raise DataError(f"class {cls} has {len(members)} image(s); a train/test split needs at least 2")
        n_test = min(max(1, round(test_fraction * len(members))), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# ----------------------------------------------------------------------------- digits


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """The fixed train/test indices into sklearn's load_digits: 1258 / 539 images, 30% of each
    class held out for the test split."""
    from sklearn.datasets import load_digits

    return stratified_split(load_digits().target, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)


def digits_data(preprocess: Preprocess = Preprocess()) -> EvalData:
    """The embedded digits, upsampled exactly as the trainer does (seer.data.digits_images)."""
    images, labels = digits_images(preprocess.image_size)
    images, labels = preprocess(images), labels.long()
    train, test = (torch.from_numpy(i) for i in digits_split())
    return EvalData(
        name="digits",
        train=TensorDataset(images[train], labels[train]),
        test=TensorDataset(images[test], labels[test]),
        train_labels=labels[train],
        test_labels=labels[test],
        class_names=tuple(str(d) for d in range(10)),
    )


# ----------------------------------------------------------------------------- image files


class ImageFiles(Dataset):
    """(preprocessed image, label) pairs decoded by the trainer's decode_image.

    The trainer skips an unreadable image; here it is an error naming the file, because skipping
    would silently change the evaluation split.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], preprocess: Preprocess) -> None:
        self.paths = list(paths)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path = self.paths[index]
        try:
            image = decode_image(path, self.preprocess.image_size)
        except (UnreadableImage, OSError) as error:
            raise DataError(f"cannot read image {path}: {error}") from error
        return self.preprocess(image), int(self.labels[index])


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def scan_labelled_folder(root: Path, min_classes: int = 2) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """Paths, class ids and class names of root/<class>/**/<image>; one subfolder per class.

    A training folder needs two classes at least; a test folder may hold fewer (min_classes=1).
    """
    if not root.exists():
        raise DataError(f"labelled folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (expected one subfolder of images per class)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    empty = []
    for class_id, class_dir in enumerate(class_dirs):
        images = _images_under(class_dir)
        if not images:
            empty.append(class_dir.name)
        paths += images
        labels += [class_id] * len(images)
    if empty:
        raise DataError(f"labelled folder {root}: class folder(s) without images: {', '.join(empty)}")
    if len(class_dirs) < min_classes:
        found = f"one class folder ({class_dirs[0].name!r})" if class_dirs else "no class folder"
        loose = len([p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS])
        hint = f"; {loose} image(s) lie directly in it" if loose else ""
        raise DataError(
            f"labelled folder {root} has {found}{hint}: it needs one subfolder per class and at least "
            "two classes (root/cat/*.jpg, root/dog/*.jpg, ...)"
        )
    return paths, labels, tuple(d.name for d in class_dirs)


def folder_data(
    root: Path,
    preprocess: Preprocess,
    test_root: Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> EvalData:
    """A labelled folder, split per class with a fixed seed, or a train folder plus a test folder."""
    paths, labels, classes = scan_labelled_folder(root)
    if test_root is None:
        train, test = stratified_split(np.asarray(labels), test_fraction, seed)
        train_paths, train_labels = [paths[i] for i in train], [labels[i] for i in train]
        test_paths, test_labels = [paths[i] for i in test], [labels[i] for i in test]
    else:
        train_paths, train_labels = paths, labels
        test_paths, test_ids, test_classes = scan_labelled_folder(test_root, min_classes=1)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(f"test folder {test_root} has classes not in {root}: {', '.join(unknown)}")
        test_labels = [classes.index(test_classes[i]) for i in test_ids]
    return EvalData(
        name=root.name,
        train=ImageFiles(train_paths, train_labels, preprocess),
        test=ImageFiles(test_paths, test_labels, preprocess),
        train_labels=torch.as_tensor(train_labels, dtype=torch.long),
        test_labels=torch.as_tensor(test_labels, dtype=torch.long),
        class_names=classes,
    )


# ----------------------------------------------------------------------------- split files


def read_split_file(path: Path, root: Path | None = None) -> list[tuple[Path, str]]:
    """(image path, class name) pairs from a split file.

    Formats: `.csv` with columns path,label (a header row naming them is skipped), or any other
    extension with one `path label` per line, split at the last whitespace (so paths may contain
    spaces); blank lines and lines starting with # are ignored. Relative paths are resolved against
    root, or the split file's folder when root is None.
    """
    if not path.is_file():
        raise DataError(f"split file {path} does not exist")
    base = root if root is not None else path.parent
    rows: list[tuple[str, str]] = []
    with path.open(newline="") as handle:
        if path.suffix.lower() == ".csv":
            for number, row in enumerate(csv.reader(handle), start=1):
                if not row or row[0].startswith("#") or (number == 1 and row[:2] == ["path", "label"]):
                    continue
                if len(row) != 2:
                    raise DataError(f"{path}:{number}: expected 'path,label', got {row}")
                rows.append((row[0].strip(), row[1].strip()))
        else:
            for number, line in enumerate(handle, start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.rsplit(maxsplit=1)
                if len(parts) != 2:
                    raise DataError(f"{path}:{number}: expected 'path label', got {line!r}")
                rows.append((parts[0], parts[1]))
    if not rows:
        raise DataError(f"split file {path} lists no image")
    return [(Path(p) if Path(p).is_absolute() else base / p, label) for p, label in rows]


def _class_order(names: set[str]) -> tuple[str, ...]:
    # Integer labels sort numerically (so "10" follows "9"); anything else sorts as text.
    if all(n.lstrip("-").isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def split_files_data(
    train_file: Path,
    test_file: Path,
    preprocess: Preprocess,
    root: Path | None = None,
) -> EvalData:
    """Explicit train and test lists; the classes are those named in the train list."""
    train_rows = read_split_file(train_file, root)
    test_rows = read_split_file(test_file, root)
    classes = _class_order({label for _, label in train_rows})
    unknown = sorted({label for _, label in test_rows} - set(classes))
    if unknown:
        raise DataError(
            f"test split {test_file} has labels absent from {train_file}: {', '.join(unknown[:10])}"
        )
    missing = [str(p) for p, _ in train_rows + test_rows if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"image(s) listed in the split files do not exist: {', '.join(missing[:5])}{more}")
    index = {name: i for i, name in enumerate(classes)}

    def dataset(rows: list[tuple[Path, str]]) -> tuple[ImageFiles, Tensor]:
        labels = [index[label] for _, label in rows]
        return ImageFiles([p for p, _ in rows], labels, preprocess), torch.as_tensor(labels, dtype=torch.long)

    train, train_labels = dataset(train_rows)
    test, test_labels = dataset(test_rows)
    return EvalData(
        name=train_file.stem,
        train=train,
        test=test,
        train_labels=train_labels,
        test_labels=test_labels,
        class_names=classes,
    )

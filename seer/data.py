"""Image sources for pretraining, split across ranks, with an exact data position.

  digits      scikit-learn's load_digits (1797 real 8x8 handwritten digits shipped inside
              scikit-learn), upsampled, held in memory; labels are never returned.
  folder      any directory, searched recursively, labels ignored (uncurated, like SEER's).
  webdataset  tar shards (paths, brace patterns, or anything webdataset.gopen opens),
              streamed, split across ranks and DataLoader workers.
  synthetic   random uint8 images made on the training device: no files, no decoding, no
              copy to the device, so a run measures the device's side alone.

Every source yields batches of (B, 3, S, S) images (float in [0, 1] for digits, uint8 for
decoded files: four times less to move to the device) plus the names of the samples
skipped while building the batch (file paths, `shard:key`), so that the trainer counts
each unreadable file once however often it is met. Unreadable images (corrupt, truncated,
zero bytes, not an image, no read permission, deleted since the listing) are skipped with
a warning, never a crash; so are a folder's unreadable directories and non-regular files
(FIFOs, broken links), found while listing and reported with each epoch's first batch. A
missing, empty or unlistable source, or a folder whose first files are all unreadable, is a
clear error naming the path. An image smaller than the global crop is upsampled, and said
once.

Data position: batch `i` of epoch `e` is a pure function of (seed, e, i, rank), so a
checkpoint stores (epoch, batch index) and a resumed run continues with the next batch.
"""

from __future__ import annotations

import io
import os
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from seer.config import ConfigError, DataConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Warn for the first few unreadable images of a worker, then only every Nth: a billion-
# image run with a small fraction of bad files must not drown its log.
_WARN_FIRST, _WARN_EVERY = 20, 1000

# Images and the names of the samples skipped while building them.
Batch = tuple[torch.Tensor, tuple[str, ...]]


@dataclass
class Shard:
    """Where this process sits among the consumers of a source."""

    rank: int = 0
    world: int = 1


# ------------------------------------------------------------------------ decoding


class UnreadableImage(Exception):
    pass


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16-bit and 32-bit grayscale are rescaled (PIL's own
    convert clips them to white), alpha is composited over white, CMYK/P/L converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and a.max() > 255):
            hi = 65535.0  # 16-bit samples (PIL opens 16-bit PNGs as I;16 or I)
        elif img.mode == "I":
            hi = 255.0
        else:  # float images: scale the largest value to white
            hi = max(float(a.max()), 1e-12)
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def decode_image(data: str | Path | bytes, size: int) -> torch.Tensor:
    """A file path or encoded bytes -> (3, size, size) uint8: shorter side resized to
    `size`, centre crop. Raises UnreadableImage for anything that is not a readable image."""
    return decode_image_sized(data, size)[0]


def decode_image_sized(data: str | Path | bytes, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """decode_image, and the (width, height) of the image as stored."""
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        with Image.open(source) as img:
            stored = img.size
            img.draft("RGB", (size, size))  # JPEG: decode at reduced scale when larger
            img.load()  # decode now: truncated or corrupt data raises here, not later
            img = ImageOps.exif_transpose(_to_rgb(img))
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError, IndexError) as exc:
        raise UnreadableImage(f"{type(exc).__name__}: {exc}") from None
    if array.shape != (size, size, 3):
        raise UnreadableImage(f"decoded to shape {array.shape}")
    return torch.from_numpy(array.copy()).permute(2, 0, 1), stored


def small_image(what: str, stored: tuple[int, int], crop_size: int) -> str | None:
    """`what is WxH px` when the image's shorter side is below the global crop size."""
    return f"{what} is {stored[0]}x{stored[1]} px" if min(stored) < crop_size else None


class SmallImageNote:
    """Warns once, in the process that reads the batches, at the first image whose shorter
    side is below the global crop: its crops are upsampled (blurrier than their size
    suggests). DataLoader workers only report such images, so the note survives their
    restart at every epoch."""

    def __init__(self, crop_size: int) -> None:
        self.crop_size, self.warned = crop_size, False

    def report(self, small: str | None) -> None:
        if small is None or self.warned:
            return
        self.warned = True
        warnings.warn(
            f"{small}, smaller than the {self.crop_size} px global crop (augment.global_size): "
            "such images are upsampled (said once)",
            stacklevel=2,
        )


class SkipLog:
    """Counts the skipped samples and rate-limits the warnings about them (per process);
    with `keep_names`, `names` lists them for a caller that reads them."""

    def __init__(self, keep_names: bool = True) -> None:
        self.count = 0
        self.keep_names = keep_names
        self.names: list[str] = []

    def skip(self, what: str, reason: str, kind: str = "unreadable image") -> None:
        self.count += 1
        if self.keep_names:
            self.names.append(what)
        if self.count <= _WARN_FIRST or self.count % _WARN_EVERY == 0:
            more = f" (skipped {self.count} so far in this process)" if self.count >= _WARN_FIRST else ""
            warnings.warn(f"skipping {kind} {what}: {reason}{more}", stacklevel=2)


# ------------------------------------------------------------------------ epoch order


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of sample indices for an epoch, identical on every rank."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen)


def check_start(source, start: int) -> None:
    """A resume position lies inside the epoch: batch `start` of `steps_per_epoch()`.
    Past it (the data shrank, or the batch grew, since the checkpoint) an epoch would be
    empty, and a caller that loops until its step count would spin forever."""
    if not 0 <= start < source.steps_per_epoch():
        raise ValueError(
            f"start batch {start} is outside the epoch of {source.steps_per_epoch()} batches "
            f"of {source.description}"
        )


def rank_batches(n: int, batch: int, shard: Shard, seed: int, epoch: int, start: int) -> Iterator[list[int]]:
    """Index lists of this rank's batches of an epoch, from batch `start` on. The global
    batch is batch * world; the last incomplete global batch is dropped."""
    order = epoch_order(n, seed, epoch)
    global_batch = batch * shard.world
    for i in range(start, n // global_batch):
        lo = i * global_batch + shard.rank * batch
        yield order[lo : lo + batch].tolist()


# ------------------------------------------------------------------------ digits


def digits_images(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 handwritten digits as (N, 3, size, size) float in [0, 1]
    (ink bright on black, bilinear upsampling) and their (N,) labels. The trainer never
    looks at the labels; the evaluation uses them."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(digits.target)


class DigitsSource:
    def __init__(self, cfg: DataConfig, batch: int, shard: Shard, seed: int) -> None:
        self.images, _ = digits_images(cfg.image_size)
        self.batch, self.shard, self.seed = batch, shard, seed
        self.description = f"digits ({len(self.images)} images, {cfg.image_size} px)"

    def __len__(self) -> int:
        return len(self.images)

    def steps_per_epoch(self) -> int:
        return len(self.images) // (self.batch * self.shard.world)

    def epoch(self, epoch: int, start: int) -> Iterator[Batch]:
        check_start(self, start)
        for idx in rank_batches(len(self.images), self.batch, self.shard, self.seed, epoch, start):
            yield self.images[idx], ()


# ------------------------------------------------------------------------ folder


def list_images(root: str | Path) -> tuple[list[str], list[str]]:
    """Image files under `root`, recursively, sorted, and the entries skipped while
    listing. Follows directory symlinks but never twice into the same directory (no
    symlink loops). Only regular files are listed: a FIFO named x.jpg would block its
    reader forever. An unreadable or vanished directory, and a FIFO, device, socket or
    broken link with an image name, is warned about, skipped and counted; an unreadable
    root is an error naming it. One scandir per directory and no stat per plain file (the
    entry types come with the listing), so the cost is linear in the number of entries."""
    root = Path(root)
    if not root.exists():
        raise ConfigError(f"data.path {str(root)!r} does not exist")
    if not root.is_dir():
        raise ConfigError(f"data.path {str(root)!r} is not a directory (data.source=folder)")
    log = SkipLog()
    seen: set[tuple[int, int]] = set()
    files: list[str] = []
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as entries:
                for entry in entries:
                    _list_entry(entry, files, pending, log)
        except OSError as exc:
            if directory == str(root):
                raise ConfigError(
                    f"data.path {str(root)!r} cannot be listed: {exc.strerror or exc}"
                ) from None
            log.skip(directory, f"{type(exc).__name__}: {exc.strerror or exc}", kind="unreadable directory")
    if not files:
        skipped = f" ({log.count} unreadable entries skipped)" if log.count else ""
        raise ConfigError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under data.path {str(root)!r}{skipped}"
        )
    return sorted(files), log.names


def _list_entry(entry: os.DirEntry, files: list[str], pending: list[str], log: SkipLog) -> None:
    """Sorts one directory entry into `files` (an image), `pending` (a directory to list)
    or the skip log; anything else is ignored."""
    try:
        if entry.is_dir():  # follows symlinks, as data.path may be a farm of links
            pending.append(entry.path)
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
            if entry.is_file():
                files.append(entry.path)
            else:
                log.skip(entry.path, "a FIFO, device, socket or broken link", kind="non-regular file")
    except OSError as exc:  # vanished, or its type unreadable, since the directory was read
        log.skip(entry.path, f"{type(exc).__name__}: {exc.strerror or exc}", kind="unlistable entry")


class FolderDataset(torch.utils.data.Dataset):
    """Decodes file i; an unreadable file is replaced by the next readable one (so the
    batch keeps its size and the replacement is deterministic) and named."""

    def __init__(self, files: list[str], size: int, max_failures: int, crop_size: int = 0) -> None:
        self.files, self.size, self.max_failures, self.crop_size = files, size, max_failures, crop_size
        # The names go out with each item; kept here too, they would only grow, by every
        # unreadable file each epoch (without workers, for the whole run).
        self.log = SkipLog(keep_names=False)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, tuple[str, ...], str | None]:
        """(image, names of the files skipped for it, `small_image` of it)."""
        skipped: list[str] = []
        for attempt in range(min(self.max_failures, len(self.files))):
            path = self.files[(index + attempt) % len(self.files)]
            try:
                image, stored = decode_image_sized(path, self.size)
                return image, tuple(skipped), small_image(path, stored, self.crop_size)
            except UnreadableImage as exc:
                self.log.skip(path, str(exc))
            except OSError as exc:  # vanished or unreadable since listing
                self.log.skip(path, f"{type(exc).__name__}: {exc}")
            skipped.append(path)
        raise RuntimeError(
            f"no readable image in {min(self.max_failures, len(self.files))} consecutive files "
            f"from {self.files[index]!r}: is data.path {os.path.dirname(self.files[index])!r} an image folder?"
        )


def collate(
    items: list[tuple[torch.Tensor, tuple[str, ...], str | None]],
) -> tuple[torch.Tensor, tuple[str, ...], str | None]:
    """(images, skipped names, the first small image's note or None)."""
    small = next((note for _, _, note in items if note is not None), None)
    return torch.stack([x for x, _, _ in items]), tuple(n for _, names, _ in items for n in names), small


class _OffsetBatches(torch.utils.data.Sampler):
    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class FolderSource:
    def __init__(self, cfg: DataConfig, batch: int, shard: Shard, seed: int, crop_size: int = 0) -> None:
        self.files, self.listing_skipped = list_images(cfg.path)
        self.cfg, self.batch, self.shard, self.seed = cfg, batch, shard, seed
        self.dataset = FolderDataset(self.files, cfg.image_size, cfg.max_consecutive_failures, crop_size)
        self.small = SmallImageNote(crop_size)
        n = len(self.listing_skipped)
        skipped = f", {n} {'entry' if n == 1 else 'entries'} skipped while listing" if n else ""
        self.description = f"folder {cfg.path} ({len(self.files)} files{skipped}, {cfg.image_size} px)"
        self._probe()

    def _probe(self) -> None:
        """A folder whose first files (in listing order, up to data.max_consecutive_failures)
        are all unreadable is a configuration error now, not a failure at the first step."""
        tried = self.files[: max(1, min(self.cfg.max_consecutive_failures, len(self.files)))]
        reasons = []
        for path in tried:
            try:
                decode_image_sized(path, 1)
                return
            except (UnreadableImage, OSError) as exc:
                reasons.append(f"{os.path.basename(path)}: {exc}")
        every = "all" if len(tried) == len(self.files) else "the first"
        raise ConfigError(
            f"data.path {self.cfg.path!r} holds no readable image: {every} {len(tried)} of its "
            f"{len(self.files)} image files failed to decode (e.g. {reasons[0]})"
        )

    def __len__(self) -> int:
        return len(self.files)

    def steps_per_epoch(self) -> int:
        return len(self.files) // (self.batch * self.shard.world)

    def epoch(self, epoch: int, start: int) -> Iterator[Batch]:
        check_start(self, start)
        batches = list(rank_batches(len(self.files), self.batch, self.shard, self.seed, epoch, start))
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_OffsetBatches(batches),
            num_workers=self.cfg.num_workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
        )
        # The listing's skips come with the first batch of every epoch; the trainer counts
        # each name once.
        listing = tuple(self.listing_skipped)
        for images, skipped, small in loader:
            self.small.report(small)
            yield images, listing + skipped
            listing = ()


# ------------------------------------------------------------------------ webdataset


def expand_shards(spec: str) -> list[str]:
    """Comma-separated paths or brace patterns -> shard URLs; local files must exist."""
    from braceexpand import braceexpand

    urls = [u for part in spec.split(",") if part.strip() for u in braceexpand(part.strip())]
    if not urls:
        raise ConfigError(f"data.path {spec!r} names no shards")
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not os.path.isfile(u)]
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(urls)} shards of data.path {spec!r} do not exist, e.g. {missing[0]!r}"
        )
    return urls


def tar_samples(url: str, log: SkipLog) -> Iterator[tuple[str, bytes]]:
    """(key, image bytes) of one shard, WebDataset layout (files grouped by the name up to
    the first dot of the basename); a truncated or corrupt shard ends early, counted."""
    import webdataset as wds

    key, image = None, None
    try:
        with wds.gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                prefix = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                ext = base.split(".", 1)[1].lower() if "." in base else ""
                if prefix != key:
                    if image is not None:
                        yield key, image
                    key, image = prefix, None
                if "." + ext in IMAGE_EXTENSIONS and image is None:
                    image = tar.extractfile(member).read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        log.skip(f"shard {url} (after {key})", f"{type(exc).__name__}: {exc}")
        return
    if image is not None:
        yield key, image


class ShardStream(torch.utils.data.IterableDataset):
    """Endless stream of decoded samples for one (rank, worker) slot of an epoch.

    With at least as many shards as slots (ranks x workers), each slot reads its own
    shards (shuffled per epoch); with fewer, every slot reads all shards and keeps every
    n-th sample. Shards are cycled, so an epoch is a sample count, not a pass."""

    def __init__(
        self, urls: list[str], size: int, shard: Shard, seed: int, epoch: int, crop_size: int = 0
    ) -> None:
        super().__init__()
        self.urls, self.size, self.shard, self.seed, self.epoch = urls, size, shard, seed, epoch
        self.crop_size = crop_size

    def _slot(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return self.shard.rank * workers + worker, self.shard.world * workers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, tuple[str, ...], str | None]]:
        slot, n_slots = self._slot()
        log, reported, cycle = SkipLog(), 0, 0
        while True:
            order = [self.urls[i] for i in epoch_order(len(self.urls), self.seed + cycle, self.epoch)]
            mine, stride = (order[slot::n_slots], 1) if len(order) >= n_slots else (order, n_slots)
            produced = False
            for url in mine:
                for i, (key, data) in enumerate(tar_samples(url, log)):
                    if stride > 1 and i % stride != slot:
                        continue
                    try:
                        sample, stored = decode_image_sized(data, self.size)
                    except UnreadableImage as exc:
                        log.skip(f"{url}:{key}", str(exc))
                        continue
                    produced = True
                    yield (
                        sample,
                        tuple(log.names[reported:]),
                        small_image(f"{url}:{key}", stored, self.crop_size),
                    )
                    reported = len(log.names)
            if not produced:
                raise RuntimeError(f"no readable image in the shards of this worker: {mine[:3]}")
            cycle += 1


class WebDatasetSource:
    def __init__(self, cfg: DataConfig, batch: int, shard: Shard, seed: int, crop_size: int = 0) -> None:
        self.urls = expand_shards(cfg.path)
        self.cfg, self.batch, self.shard, self.seed = cfg, batch, shard, seed
        self.crop_size = crop_size
        self.small = SmallImageNote(crop_size)
        self.description = f"webdataset {cfg.path} ({len(self.urls)} shards, {cfg.epoch_size} samples/epoch)"

    def __len__(self) -> int:
        return self.cfg.epoch_size

    def steps_per_epoch(self) -> int:
        return self.cfg.epoch_size // (self.batch * self.shard.world)

    def epoch(self, epoch: int, start: int) -> Iterator[Batch]:
        check_start(self, start)
        stream = ShardStream(self.urls, self.cfg.image_size, self.shard, self.seed, epoch, self.crop_size)
        loader = torch.utils.data.DataLoader(
            stream, batch_size=self.batch, num_workers=self.cfg.num_workers, collate_fn=collate
        )
        # Streams cannot seek: a resumed epoch reads and drops the batches already used.
        for i, (images, skipped, small) in enumerate(loader):
            if i >= self.steps_per_epoch():
                return
            if i >= start:
                self.small.report(small)
                yield images, skipped


# ------------------------------------------------------------------------ synthetic

# Samples per epoch of the synthetic source when data.epoch_size is 0 (ImageNet-1k's train
# split): the schedule's epochs then mean what they usually do.
SYNTHETIC_EPOCH = 1_281_167


class SyntheticSource:
    """Random images, uint8 like decoded files, drawn on `device` by a generator seeded
    from (seed, epoch, batch, rank): the multi-crop augmentation and the model see the
    shapes and dtype of a real run, while loading and decoding cost nothing. Batches are a
    pure function of their position, so resume works as for the other sources."""

    def __init__(self, cfg: DataConfig, batch: int, shard: Shard, seed: int, device: torch.device) -> None:
        self.size, self.batch, self.shard, self.seed = cfg.image_size, batch, shard, seed
        self.device = torch.device(device)
        self.epoch_size = cfg.epoch_size or SYNTHETIC_EPOCH
        self.description = (
            f"synthetic (random {cfg.image_size} px images made on {self.device}, "
            f"{self.epoch_size} samples/epoch)"
        )

    def __len__(self) -> int:
        return self.epoch_size

    def steps_per_epoch(self) -> int:
        return self.epoch_size // (self.batch * self.shard.world)

    def batch_at(self, epoch: int, index: int) -> torch.Tensor:
        key = np.random.SeedSequence([self.seed, epoch, index, self.shard.rank]).generate_state(1)[0]
        gen = torch.Generator(device=self.device).manual_seed(int(key))
        shape = (self.batch, 3, self.size, self.size)
        return torch.randint(0, 256, shape, dtype=torch.uint8, device=self.device, generator=gen)

    def epoch(self, epoch: int, start: int) -> Iterator[Batch]:
        check_start(self, start)
        for index in range(start, self.steps_per_epoch()):
            yield self.batch_at(epoch, index), ()


def build_source(
    cfg: DataConfig,
    batch: int,
    shard: Shard,
    seed: int,
    device: torch.device | str = "cpu",
    crop_size: int = 0,
):
    """The source `cfg.source` for this rank; `device` is where the synthetic source draws;
    decoded files smaller than `crop_size` (the global crop) are said once."""
    if cfg.source == "synthetic":
        source = SyntheticSource(cfg, batch, shard, seed, torch.device(device))
    else:
        source = _file_source(cfg, batch, shard, seed, crop_size)
    if source.steps_per_epoch() < 1:
        raise ConfigError(
            f"{source.description}: fewer samples than one global batch "
            f"({batch} x {shard.world} ranks); lower train.batch_size"
        )
    return source


def _file_source(cfg: DataConfig, batch: int, shard: Shard, seed: int, crop_size: int):
    if cfg.source == "digits":
        return DigitsSource(cfg, batch, shard, seed)
    if not cfg.path:
        raise ConfigError(f"data.path is required for data.source={cfg.source} (e.g. data.path=/data/images)")
    sources = {"folder": FolderSource, "webdataset": WebDatasetSource}
    return sources[cfg.source](cfg, batch, shard, seed, crop_size)

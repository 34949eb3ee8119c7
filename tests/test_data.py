"""Data sources and the batched multi-crop augmentation.

Hostile inputs are skipped and counted (each file once), never a crash; ranks read
disjoint data; a resume position past the epoch is refused, never an empty epoch; the
batched per-sample augmentation equals torchvision's per-image functions; the photo recipe
is SwAV's."""

from __future__ import annotations

import builtins
import errno
import io
import json
import math
import os
import tarfile
import time
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from seer.augment import MultiCrop, color_jitter, crop_matrices, gaussian_blur, hsv_to_rgb, rgb_to_hsv
from seer.config import AugmentConfig, ConfigError, DataConfig, load_config
from seer.data import (
    SYNTHETIC_EPOCH,
    FolderSource,
    Shard,
    UnreadableImage,
    WebDatasetSource,
    build_source,
    decode_image,
    digits_images,
    list_images,
)
from seer.monitor import rss_mb

# ------------------------------------------------------------------------ fixtures


def _jpeg_bytes(rng: np.random.Generator, w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_hostile_folder(root) -> dict[str, bool]:
    """Good images in nested folders plus every kind of bad file the issue lists.
    Returns {relative path: readable}."""
    rng = np.random.default_rng(0)
    files = {}
    for i in range(16):
        sub = root / f"part{i % 3}" / "deeper"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"good{i}.jpg").write_bytes(_jpeg_bytes(rng, 24 + 7 * i, 40 - i))
        files[f"part{i % 3}/deeper/good{i}.jpg"] = True
    good = _jpeg_bytes(rng, 64, 48)
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("this is a text file, not an image\n")
    Image.new("CMYK", (40, 30), (0, 128, 255, 0)).save(root / "cmyk.jpg")
    Image.fromarray(np.full((30, 20), 32768, dtype=np.uint16)).save(root / "sixteen.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 128)).save(root / "alpha.png")
    Image.new("RGB", (1, 1), (10, 200, 30)).save(root / "tiny.png")
    (root / "readme.txt").write_text("not listed: not an image extension")
    files.update({"truncated.jpg": False, "zero.jpg": False, "notes.jpg": False})
    files.update({"cmyk.jpg": True, "sixteen.png": True, "alpha.png": True, "tiny.png": True})
    return files


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _write_pngs(directory, names) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    png = _tiny_png()
    for name in names:
        (directory / name).write_bytes(png)


def _link_pngs(directory, names, source) -> None:
    """Hard links to one tiny PNG: ordinary files to the listing and the loader, made
    ~30x faster than as many writes (10,000 in 0.1 s against 4 s on a busy disk)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.link(source, directory / name)


@pytest.fixture
def deny_read(monkeypatch):
    """deny(path, ...) makes files and directories unreadable: chmod 000, and where that
    does not bind (root reads anything) the PermissionError that chmod would give,
    raised by open and os.scandir, the calls through which the data code reads."""
    denied: set[str] = set()

    def deny(*paths) -> None:
        for path in paths:
            os.chmod(path, 0)
            denied.add(os.fspath(path))

    def refuse(path) -> None:
        if isinstance(path, (str, os.PathLike)) and os.fspath(path) in denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    if os.geteuid() == 0:
        real_open, real_scandir = builtins.open, os.scandir

        def guarded_open(file, *args, **kwargs):
            refuse(file)
            return real_open(file, *args, **kwargs)

        def guarded_scandir(path="."):
            refuse(path)
            return real_scandir(path)

        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(os, "scandir", guarded_scandir)
    yield deny
    for path in denied:  # so that pytest can delete tmp_path
        os.chmod(path, 0o755)


# ------------------------------------------------------------------------ decoding


def test_decode_hostile_files(tmp_path):
    files = make_hostile_folder(tmp_path)
    for rel, readable in files.items():
        path = tmp_path / rel
        if not readable:
            with pytest.raises(UnreadableImage):
                decode_image(path, 16)
            continue
        x = decode_image(path, 16)
        assert x.shape == (3, 16, 16) and x.dtype == torch.uint8
    # 16-bit samples are rescaled, not clipped to white; alpha goes over white; 1x1 fills.
    assert decode_image(tmp_path / "sixteen.png", 8).float().mean().item() == pytest.approx(128, abs=1)
    alpha = decode_image(tmp_path / "alpha.png", 8).float().mean(dim=(1, 2))
    assert alpha.tolist() == pytest.approx([255, 127, 127], abs=2)
    assert decode_image(tmp_path / "tiny.png", 8)[:, 3, 3].tolist() == [10, 200, 30]
    cmyk = decode_image(tmp_path / "cmyk.jpg", 8).float().mean(dim=(1, 2))
    assert cmyk[0] > 200 and cmyk[2] < 60  # CMYK (0, 128, 255, 0) is orange-ish in RGB
    assert decode_image((tmp_path / "part0/deeper/good0.jpg").read_bytes(), 8).shape == (3, 8, 8)


def test_folder_source_skips_and_counts(tmp_path):
    files = make_hostile_folder(tmp_path)
    cfg = DataConfig(source="folder", path=str(tmp_path), image_size=16)
    source = FolderSource(cfg, batch=5, shard=Shard(), seed=0)
    assert len(source) == len(files)  # readme.txt is not listed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(source.epoch(0, 0))
    assert len(batches) == len(files) // 5
    assert all(x.shape == (5, 3, 16, 16) for x, _ in batches)
    skipped = [name for _, names in batches for name in names]
    # Each unreadable file met is replaced by the next one and named, once per meeting.
    assert skipped and set(skipped) <= {str(tmp_path / rel) for rel, ok in files.items() if not ok}
    assert len([w for w in caught if "skipping unreadable image" in str(w.message)]) == len(skipped)


def test_folder_all_unreadable_is_a_clear_error(tmp_path):
    """Found when the source is built (a config error: one line, nothing written), and at
    the first batch of a folder whose files broke since."""
    for i in range(4):
        (tmp_path / f"bad{i}.jpg").write_text("nope")
    cfg = DataConfig(source="folder", path=str(tmp_path), image_size=8, max_consecutive_failures=10)
    with pytest.raises(
        ConfigError, match=r"data.path '.*' holds no readable image: all 4 of its 4 .*bad0.jpg"
    ):
        FolderSource(cfg, 2, Shard(), 0)
    _write_pngs(tmp_path / "ok", ["a.png"])
    source = FolderSource(DataConfig(source="folder", path=str(tmp_path / "ok"), image_size=8), 1, Shard(), 0)
    (tmp_path / "ok" / "a.png").write_text("broken since")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="no readable image in 1 consecutive files"):
            next(source.epoch(0, 0))


def test_list_images_survives_symlink_loops(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    files, skipped = list_images(tmp_path)
    assert [os.path.basename(f) for f in files] == ["x.png"] and skipped == []
    with pytest.raises(ConfigError, match="is not a directory"):
        list_images(tmp_path / "a" / "x.png")


# ------------------------------------------------------------------------ rank split


def test_digits_ranks_read_disjoint_batches_and_positions_resume():
    images, labels = digits_images(16)
    assert images.shape == (1797, 3, 16, 16) and labels.shape == (1797,)
    cfg = DataConfig(image_size=16)
    for rank in range(3):
        source = build_source(cfg, 32, Shard(rank, 3), seed=1)
        assert source.steps_per_epoch() == 1797 // 96
        batches = [x for x, _ in source.epoch(2, 0)]
        # Resuming at batch 5 gives exactly the remaining batches.
        again = [x for x, _ in source.epoch(2, 5)]
        assert all(torch.equal(a, b) for a, b in zip(again, batches[5:], strict=True))
    # No sample index is read by two ranks in one epoch.
    from seer.data import rank_batches

    idx = [i for r in range(3) for b in rank_batches(1797, 32, Shard(r, 3), 1, 2, 0) for i in b]
    assert len(idx) == len(set(idx)) == (1797 // 96) * 96


def test_a_start_past_the_epoch_is_refused_not_an_empty_epoch(tmp_path):
    """A checkpoint's batch index beyond a shrunk dataset's epoch: the source says so
    instead of yielding nothing (a loop counting steps would then spin forever)."""
    _write_pngs(tmp_path, (f"{i:02d}.png" for i in range(12)))
    sources = [
        build_source(DataConfig(image_size=8), 100, Shard(), 0),
        build_source(DataConfig(source="folder", path=str(tmp_path), image_size=8), 4, Shard(), 0),
        build_source(DataConfig(source="synthetic", image_size=8, epoch_size=12), 4, Shard(), 0),
    ]
    for source in sources:
        n = source.steps_per_epoch()
        assert len(list(source.epoch(0, n - 1))) == 1
        for start in (n, n + 3, -1):
            with pytest.raises(ValueError, match=f"start batch {start} is outside the epoch of {n} batches"):
                next(source.epoch(0, start))


def test_too_small_dataset_is_a_clear_error():
    with pytest.raises(ConfigError, match="fewer samples than one global batch"):
        build_source(DataConfig(image_size=8), 1000, Shard(0, 2), 0)


# ------------------------------------------------------------------------ webdataset


def _write_shard(path, keys, rng, truncate=False):
    with tarfile.open(path, "w") as tar:
        for key in keys:
            for name, data in ((f"{key}.jpg", _jpeg_bytes(rng, 20, 20)), (f"{key}.cls", b"3")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    if truncate:
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2 + 100])


def test_webdataset_shards_split_across_ranks_and_survive_truncation(tmp_path):
    rng = np.random.default_rng(0)
    for s in range(4):
        keys = [f"s{s}_{i:03d}" for i in range(6)]
        _write_shard(tmp_path / f"shard-{s}.tar", keys, rng, truncate=(s == 3))
    (tmp_path / "shard-2.tar").write_bytes((tmp_path / "shard-2.tar").read_bytes()[:0] + b"garbage" * 10)
    spec = str(tmp_path / "shard-{0..3}.tar")
    cfg = load_config(
        None, ["data.source=webdataset", f"data.path={spec}", "data.epoch_size=16", "data.image_size=8"]
    )
    per_rank = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for rank in range(2):
            source = WebDatasetSource(cfg.data, 4, Shard(rank, 2), seed=0)
            batches = list(source.epoch(0, 0))
            assert len(batches) == source.steps_per_epoch() == 2
            per_rank.append(torch.cat([x for x, _ in batches]).flatten(1))
    assert any("shard" in str(w.message) for w in caught)  # the broken shards were reported
    # Two shards per rank: the ranks decode different images.
    a, b = per_rank
    assert not any(torch.equal(r, s) for r in a for s in b)


def test_webdataset_missing_shards_named(tmp_path):
    cfg = load_config(
        None, ["data.source=webdataset", f"data.path={tmp_path}/x-{{0..1}}.tar", "data.epoch_size=4"]
    )
    with pytest.raises(ConfigError, match=r"2 of 2 shards .* do not exist, e.g. '.*x-0\.tar'"):
        WebDatasetSource(cfg.data, 2, Shard(), 0)


# ------------------------------------------------------------------------ hostile file systems


def _best_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)  # the least disturbed run on a shared machine


@pytest.mark.timeout(300)
def test_folder_of_many_tiny_files_lists_linearly_and_loads_in_bounded_memory(tmp_path):
    """25,000 2x2 PNGs (100 class folders) and a fifth of that: listing time grows about
    linearly (a quadratic listing would take 25x for 5x the files), the listing holds
    about 100 bytes per path, and a full pass of loading keeps memory flat."""
    _write_pngs(tmp_path, ["source.png"])
    shape = {"big": 100, "small": 20}  # class folders of 250 files
    for tree, classes in shape.items():
        for c in range(classes):
            names = (f"{i:03d}.png" for i in range(250))
            _link_pngs(tmp_path / tree / f"class{c:03d}", names, tmp_path / "source.png")
    big, small = tmp_path / "big", tmp_path / "small"
    assert len(list_images(big)[0]) == 25_000 and len(list_images(small)[0]) == 5_000
    t_big, t_small = _best_time(lambda: list_images(big)), _best_time(lambda: list_images(small))
    assert t_big < 10.0, f"listing 25,000 files took {t_big:.2f} s"
    assert t_big / t_small < 12, f"5x the files took {t_big / t_small:.1f}x the time: not linear"
    tracemalloc.start()
    try:
        list_images(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 25_000 * 1024, f"listing peaked at {peak / 2**20:.1f} MiB of Python objects"

    source = FolderSource(DataConfig(source="folder", path=str(big), image_size=8), 100, Shard(), 0)
    rss_before, rss_peak, batches, start = rss_mb(), 0.0, 0, time.perf_counter()
    for x, skipped in source.epoch(0, 0):
        assert x.shape == (100, 3, 8, 8) and skipped == ()
        batches += 1
        rss_peak = max(rss_peak, rss_mb() or 0.0)
    elapsed = time.perf_counter() - start
    assert batches == 250 and elapsed < 120, f"loading 25,000 tiny files took {elapsed:.0f} s"
    if rss_before is not None:  # Linux
        assert rss_peak - rss_before < 64, f"loading grew RSS by {rss_peak - rss_before:.0f} MiB"


@pytest.mark.timeout(120)
def test_unreadable_files_and_directories_are_skipped_and_counted(tmp_path, deny_read):
    root = tmp_path / "images"
    _write_pngs(root, (f"{i:02d}.png" for i in range(14)))
    _write_pngs(root / "locked", ("a.png", "b.png"))
    deny_read(root / "03.png", root / "09.png", root / "locked")
    cfg = DataConfig(source="folder", path=str(root), image_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = FolderSource(cfg, batch=7, shard=Shard(), seed=0)
        batches = list(source.epoch(0, 0))
    # The locked directory is skipped while listing; the two files fail when read.
    assert len(source) == 14 and len(source.listing_skipped) == 1 and "1 entry skipped" in source.description
    assert len(batches) == 2 and all(x.shape == (7, 3, 8, 8) for x, _ in batches)
    assert sorted(n for _, names in batches for n in names) == sorted(
        [str(root / "03.png"), str(root / "09.png"), str(root / "locked")]
    )
    messages = [str(w.message) for w in caught]
    assert any(f"unreadable directory {root / 'locked'}" in m and "PermissionError" in m for m in messages)
    assert sum(f"unreadable image {root / '03.png'}" in m for m in messages) == 1
    # Every epoch names the listing's skip again; the trainer counts each name once.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len([n for _, names in source.epoch(1, 0) for n in names]) == 3
    # An unreadable root is an error naming it; an unreadable shard is skipped and counted.
    deny_read(root)
    with pytest.raises(ConfigError, match=f"data.path '{root}' cannot be listed: Permission denied"):
        list_images(root)
    rng = np.random.default_rng(0)
    _write_shard(tmp_path / "s0.tar", [f"a{i}" for i in range(4)], rng)
    _write_shard(tmp_path / "s1.tar", [f"b{i}" for i in range(4)], rng)
    deny_read(tmp_path / "s1.tar")
    wds = load_config(
        None, ["data.source=webdataset", f"data.path={tmp_path}/s{{0..1}}.tar", "data.epoch_size=8"]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(WebDatasetSource(wds.data, 4, Shard(), seed=0).epoch(0, 0))
    assert len(batches) == 2 and any(names for _, names in batches)
    assert any("s1.tar" in str(w.message) and "PermissionError" in str(w.message) for w in caught)


@pytest.mark.timeout(120)
def test_files_deleted_after_listing_are_skipped_and_counted(tmp_path):
    _write_pngs(tmp_path / "images", (f"{i:02d}.png" for i in range(14)))
    cfg = DataConfig(source="folder", path=str(tmp_path / "images"), image_size=8)
    source = FolderSource(cfg, batch=7, shard=Shard(), seed=0)
    for name in ("03.png", "09.png"):
        (tmp_path / "images" / name).unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(source.epoch(0, 0))
    assert len(batches) == 2 and sum(len(names) for _, names in batches) == 2
    assert any("03.png" in str(w.message) and "FileNotFoundError" in str(w.message) for w in caught)
    # A shard deleted after the source was built: skipped and counted, the others read.
    rng = np.random.default_rng(0)
    for s in range(2):
        _write_shard(tmp_path / f"s{s}.tar", [f"k{s}_{i}" for i in range(4)], rng)
    wds = load_config(
        None, ["data.source=webdataset", f"data.path={tmp_path}/s{{0..1}}.tar", "data.epoch_size=8"]
    )
    stream = WebDatasetSource(wds.data, 4, Shard(), seed=0)
    (tmp_path / "s0.tar").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(stream.epoch(0, 0))
    assert len(batches) == 2 and any(names for _, names in batches)


@pytest.mark.timeout(60)
def test_fifos_and_broken_links_are_not_listed(tmp_path):
    """A FIFO named like an image would block its reader forever: never listed."""
    _write_pngs(tmp_path, ("a.png", "b.png"))
    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink(tmp_path / "gone.png", tmp_path / "broken.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files, skipped = list_images(tmp_path)
    assert [os.path.basename(f) for f in files] == ["a.png", "b.png"] and len(skipped) == 2
    assert any("non-regular file" in str(w.message) and "pipe.jpg" in str(w.message) for w in caught)


# ------------------------------------------------------------------------ augmentation


def _images(n=5, size=20, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_color_ops_match_torchvision_per_sample():
    x = _images()
    b = torch.tensor([0.6, 1.0, 1.3, 0.9, 1.1], dtype=torch.float64)
    c = torch.tensor([1.2, 0.7, 1.0, 1.4, 0.5], dtype=torch.float64)
    s = torch.tensor([0.3, 1.5, 1.0, 0.8, 1.2], dtype=torch.float64)
    h = torch.tensor([0.1, -0.2, 0.0, 0.05, -0.15], dtype=torch.float64)
    ours = color_jitter(x, b, c, s, h)
    for i in range(len(x)):
        ref = TF.adjust_brightness(x[i], float(b[i]))
        ref = TF.adjust_contrast(ref, float(c[i]))
        ref = TF.adjust_saturation(ref, float(s[i]))
        ref = TF.adjust_hue(ref, float(h[i]))
        torch.testing.assert_close(ours[i], ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


def test_color_jitter_in_a_random_order_per_sample_matches_torchvision():
    """SwAV's colour distortion is torchvision's ColorJitter, which applies its four
    adjustments in a random order per call: here a random order per crop."""
    x = _images(6)
    gen = torch.Generator().manual_seed(3)
    b, c, s = (0.2 + 1.6 * torch.rand(6, generator=gen, dtype=torch.float64) for _ in range(3))
    h = 0.4 * torch.rand(6, generator=gen, dtype=torch.float64) - 0.2
    h[2] = 0.0
    order = torch.argsort(torch.rand(6, 4, generator=gen), dim=1)
    assert len({tuple(o.tolist()) for o in order}) > 1
    ours = color_jitter(x, b, c, s, h, order=order)
    adjust = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(len(x)):
        ref = x[i]
        for k in order[i].tolist():
            ref = adjust[k](ref, float((b, c, s, h)[k][i]))
        torch.testing.assert_close(ours[i], ref, atol=2e-5, rtol=0)


def test_random_resized_crops_redraw_like_torchvision():
    """crop_attempts draws per crop before the whole-image fallback: with torchvision's 10
    at SwAV's global scales (0.14-1) a crop is almost never the whole image; with the
    digits recipe's single draw, about one in six is (the draws its results were made with)."""
    cfg = load_config("photos").augment
    assert cfg.crop_attempts == 10

    def whole_share(attempts: int) -> float:
        cfg.crop_attempts = attempts
        theta = crop_matrices(20_000, (0.14, 1.0), cfg, torch.Generator().manual_seed(0))
        whole = (theta[:, 0, 0].abs() == 1) & (theta[:, 1, 1] == 1)
        areas = (theta[:, 0, 0] * theta[:, 1, 1]).abs()
        assert ((areas >= 0.14 - 1e-6) & (areas <= 1 + 1e-6)).all()  # every crop keeps its scale
        return float(whole.double().mean())

    assert whole_share(10) < 0.001 and 0.1 < whole_share(1) < 0.25


def test_photo_recipe_is_swavs_and_the_digits_keep_theirs():
    from seer.augment import IMAGENET_MEAN, IMAGENET_STD, describe, recipe_name

    photos = load_config("photos")
    assert photos.data.source == "folder" and photos.run_dir == "runs/photos"
    aug = photos.augment
    assert recipe_name(aug) == "SwAV photo recipe"
    assert (aug.global_crops, aug.global_size, aug.global_scale) == (2, 224, [0.14, 1.0])
    assert (aug.local_crops, aug.local_size, aug.local_scale) == (6, 96, [0.05, 0.14])
    assert (aug.flip, aug.color_jitter, aug.color_strength, aug.grayscale, aug.blur) == (
        0.5,
        0.8,
        1.0,
        0.2,
        0.5,
    )
    assert aug.blur_sigma == [0.1, 2.0] and (aug.rotation, aug.shear, aug.translate) == (0, 0, 0)
    assert aug.mean == IMAGENET_MEAN and aug.std == IMAGENET_STD
    assert "flip 0.5" in describe(aug) and "ImageNet mean/std" in describe(aug)
    # SwAV's and SEER's own configs carry the same recipe; the digits keep theirs.
    for name in ("swav_regnety", "seer_regnety_32gf", "seer_regnety_10b"):
        assert recipe_name(load_config(name).augment) == "SwAV photo recipe", name
    digits = load_config("default").augment
    assert recipe_name(digits) == "digits recipe" and digits.crop_attempts == 1
    assert "rotation 10 deg" in describe(digits) and "the digits' mean/std" in describe(digits)
    cfg = load_config("photos").augment
    cfg.global_size, cfg.local_size = 24, 12
    out = MultiCrop(cfg)(_images(3, 32), torch.Generator().manual_seed(0))
    assert [t.shape for t in out] == [(6, 3, 24, 24), (18, 3, 12, 12)]


def test_images_smaller_than_the_crop_warn_once(tmp_path):
    for i in range(6):
        Image.new("RGB", (40 + i, 30), (i * 40, 100, 200)).save(tmp_path / f"{i}.png")
    Image.new("RGB", (200, 150)).save(tmp_path / "big.png")
    # Two epochs, each read by a new DataLoader worker: said once all the same.
    cfg = DataConfig(source="folder", path=str(tmp_path), image_size=64, num_workers=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = build_source(cfg, 7, Shard(), 0, crop_size=48)
        for epoch in range(2):
            list(source.epoch(epoch, 0))
    small = [str(w.message) for w in caught if "smaller than the 48 px global crop" in str(w.message)]
    assert len(small) == 1 and "x30 px" in small[0], small
    cfg.num_workers = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(build_source(cfg, 7, Shard(), 0, crop_size=30).epoch(0, 0))
    assert not [w for w in caught if "global crop" in str(w.message)]


def test_blur_matches_torchvision_per_sample():
    x = _images(3, 24)
    sigma = torch.tensor([0.5, 0.0, 1.7], dtype=torch.float64)
    ours = gaussian_blur(x, sigma)
    radius = math.ceil(3 * 1.7)
    for i in range(3):
        if sigma[i] == 0:
            torch.testing.assert_close(ours[i], x[i])
            continue
        ref = TF.gaussian_blur(x[i], kernel_size=[2 * radius + 1] * 2, sigma=[float(sigma[i])] * 2)
        torch.testing.assert_close(ours[i], ref, atol=1e-5, rtol=0)


def test_full_crop_without_jitter_is_a_resize():
    """Area 1, aspect 1 (forced by clamping), no jitter: the crop is the whole image."""
    cfg = AugmentConfig(rotation=0, shear=0, translate=0, flip=0.0)
    theta = crop_matrices(4, (1.0, 1.0), cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(4, 2, 3))
    flipped = crop_matrices(
        3, (1.0, 1.0), AugmentConfig(rotation=0, shear=0, translate=0, flip=1.0), torch.Generator()
    )
    assert (flipped[:, 0, 0] == -1).all()
    mc = MultiCrop(
        AugmentConfig(
            global_crops=1,
            local_crops=0,
            global_size=20,
            global_scale=[1, 1],
            rotation=0,
            shear=0,
            translate=0,
            mean=[0, 0, 0],
            std=[1, 1, 1],
        )
    )
    x = _images(2, 20)
    (out,) = mc(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_multicrop_groups_shapes_and_determinism():
    cfg = load_config("seer_regnety_32gf").augment
    cfg.global_size, cfg.local_size = 24, 12
    mc = MultiCrop(cfg)
    x = _images(3, 32)
    a = mc(x, torch.Generator().manual_seed(5))
    b = mc(x, torch.Generator().manual_seed(5))
    c = mc(x, torch.Generator().manual_seed(6))
    assert [t.shape for t in a] == [(6, 3, 24, 24), (12, 3, 12, 12)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    # Crops of one sample differ from each other (per-sample parameters).
    assert not torch.allclose(a[0][0], a[0][3])
    assert all(torch.isfinite(t).all() for t in a)


def test_training_on_a_hostile_folder_reports_skips(tmp_path):
    """Every bad file kind of the issue in one folder: training runs (with a DataLoader
    worker process) and the skips reach the metrics and the summary."""
    from seer.train import train

    images = tmp_path / "images"
    make_hostile_folder(images)
    run = tmp_path / "run"
    overrides = [
        f"run_dir={run}",
        "data.source=folder",
        f"data.path={images}",
        "data.num_workers=1",
        "train.batch_size=10",
        "train.max_steps=4",  # two epochs of 2 batches: 40 reads of 23 files
        "train.log_every=1",
        "train.progress=false",
        "train.export_backbone=false",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train(load_config(None, overrides))
    assert summary["step"] == 4 and math.isfinite(summary["final_loss"])
    assert 1 <= summary["skipped_images"] <= 3  # the three unreadable files, each counted once
    last = (run / "metrics.jsonl").read_text().splitlines()[-1]
    assert f'"skipped_images": {summary["skipped_images"]}' in last


def test_skipped_images_count_files_not_encounters(tmp_path):
    """Two unreadable files, each met in every one of three epochs (and one of them again
    as the replacement of the other): the count is two, across a resume too."""
    from seer.train import train

    _write_pngs(tmp_path / "images", (f"{i:02d}.png" for i in range(10)))
    (tmp_path / "images" / "04.png").write_bytes(b"")
    (tmp_path / "images" / "05.png").write_text("not an image")
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        "data.source=folder",
        f"data.path={tmp_path / 'images'}",
        "data.image_size=16",
        "augment.global_size=16",
        "augment.local_size=8",
        "train.batch_size=5",  # the 10 files are every epoch's two batches
        "train.max_steps=6",
        "train.progress=false",
        "train.export_backbone=false",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = train(load_config(None, [*overrides, "train.stop_at_step=3"]))
        summary = train(load_config(None, overrides))
    assert first["skipped_images"] == 2 and summary["skipped_images"] == 2 and summary["step"] == 6
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_images"] for r in records][-1] == 2


# ------------------------------------------------------------------------ synthetic


def test_synthetic_source_shapes_positions_and_ranks():
    cfg = DataConfig(source="synthetic", image_size=24, epoch_size=60)
    source = build_source(cfg, 4, Shard(0, 2), seed=5, device=torch.device("cpu"))
    assert len(source) == 60 and source.steps_per_epoch() == 7
    batches = [b for b, skipped in source.epoch(1, 0)]
    assert len(batches) == 7
    assert all(
        b.shape == (4, 3, 24, 24) and b.dtype == torch.uint8 and b.device.type == "cpu" for b in batches
    )
    assert batches[0].unique().numel() > 200  # random bytes over the whole range, not a constant
    # A batch is a function of its position: a resumed epoch continues with the same batches.
    assert all(torch.equal(a, b) for (a, _), b in zip(source.epoch(1, 3), batches[3:], strict=True))
    assert not torch.equal(batches[0], batches[1])
    assert not torch.equal(batches[0], next(source.epoch(2, 0))[0])
    other_rank = build_source(cfg, 4, Shard(1, 2), seed=5)
    assert not torch.equal(batches[0], next(other_rank.epoch(1, 0))[0])
    # No data.path needed; epoch_size 0 means ImageNet-1k's size.
    assert len(build_source(DataConfig(source="synthetic"), 4, Shard(), 0)) == SYNTHETIC_EPOCH


def test_synthetic_source_trains(tmp_path):
    from seer.train import train

    overrides = ["data.source=synthetic", "data.image_size=32", "data.epoch_size=64", "train.batch_size=16"]
    cfg = load_config(None, [f"run_dir={tmp_path}", "train.progress=false", "train.max_steps=2", *overrides])
    cfg.train.export_backbone = False
    summary = train(cfg)
    assert summary["step"] == 2 and math.isfinite(summary["final_loss"]) and summary["skipped_images"] == 0

"""SwAV multi-crop augmentation applied to whole batches, with per-sample parameters.

Per-sample torchvision transforms cost 0.22 s per step of the digits default against 0.01 s
for the same work done on the batch tensor (issue 6), so every operation here takes the
(B, 3, H, W) batch at once, on whatever device it lives on (the GPU for large runs):

  geometry  one affine_grid + grid_sample per resolution: a random resized crop (area
            `scale`, aspect 3/4..4/3, up to `crop_attempts` draws before the whole image,
            as torchvision's RandomResizedCrop), horizontal flip, optional small rotation,
            shear and translation, composed into one 2x3 matrix per crop;
  colour    brightness, contrast, saturation (torchvision's blend formulas) and hue (in HSV)
            with per-sample factors and a per-sample random order (torchvision's
            ColorJitter), applied with probability `color_jitter`; grayscale with
            probability `grayscale`;
  blur      Gaussian blur with a per-sample sigma as one grouped separable convolution;
  normalize torchvision.transforms.v2.functional.normalize.

Two recipes ship: the digits' (configs/default.yaml: small rotation and shear, no flip or
colour, the digits' statistics) and SwAV's for photos (configs/photos.yaml and the SwAV/SEER
configs: flip 0.5, colour jitter 0.8 at strength 1, grayscale 0.2, blur 0.5 with sigma
0.1-2, ImageNet statistics; `recipe_name` tells them apart).

The input is the decoded square (`data.image_size`, the centre of each photo); the crops
are drawn inside it.

All randomness comes from one torch.Generator, so a checkpoint that saves its state resumes
the exact same crops. Crops come back grouped by resolution, crop-major: group g holds
n_g * B images, crop c of sample b at row c * B + b.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from seer.config import AugmentConfig


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


def crop_matrices(
    n: int, scale: tuple[float, float], cfg: AugmentConfig, gen: torch.Generator
) -> torch.Tensor:
    """(n, 2, 3) affine_grid matrices mapping output coordinates in [-1, 1] to the input.

    A crop of area fraction s and aspect ratio r is w = sqrt(s r), h = sqrt(s / r) image
    sides wide/high; its half-extent in affine_grid units is (w, h) and its centre is uniform over
    the positions that keep it inside the image, plus the optional translation jitter."""
    k = cfg.crop_attempts
    area = _uniform(n * k, scale[0], scale[1], gen).view(n, k)
    log_ratio = _uniform(n * k, math.log(3 / 4), math.log(4 / 3), gen).view(n, k)
    w = torch.sqrt(area * torch.exp(log_ratio))
    h = torch.sqrt(area / torch.exp(log_ratio))
    # The first of the k draws that fits inside the image; when none does, the whole
    # (square) image: torchvision's fallback after its 10 rejected draws.
    fits = (w <= 1) & (h <= 1)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    outside = ~fits.any(dim=1)
    w, h = torch.where(outside, 1.0, w), torch.where(outside, 1.0, h)
    cx = (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * (1 - w)
    cy = (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * (1 - h)
    cx = cx + _uniform(n, -2 * cfg.translate, 2 * cfg.translate, gen)
    cy = cy + _uniform(n, -2 * cfg.translate, 2 * cfg.translate, gen)
    flip = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < cfg.flip, -1.0, 1.0)
    angle = torch.deg2rad(_uniform(n, -cfg.rotation, cfg.rotation, gen))
    shear = torch.tan(torch.deg2rad(_uniform(n, -cfg.shear, cfg.shear, gen)))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # A = diag(w * flip, h) @ R(angle) @ [[1, shear], [0, 1]]
    a00, a01 = cos, cos * shear - sin
    a10, a11 = sin, sin * shear + cos
    theta = torch.stack(
        [
            torch.stack([w * flip * a00, w * flip * a01, cx], dim=1),
            torch.stack([h * a10, h * a11, cy], dim=1),
        ],
        dim=1,
    )
    return theta.float()


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (the formulas torchvision uses)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) HSV in [0, 1] -> RGB: channel c is v - v s clamp(min(k, 4 - k), 0, 1)
    with k = (n_c + 6 h) mod 6, n = 5, 3, 1 for R, G, B, the sector formulas of torchvision
    in closed form (three elementwise passes instead of six masked selects: half the time
    of a 224 px crop's hue jitter on a CPU)."""
    h, s, v = x.unbind(1)
    h6 = h * 6.0
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        channels.append(v - v * s * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(channels, dim=1)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor).clamp(0, 1)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = TF.rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return (factor * x + (1 - factor) * mean).clamp(0, 1)


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * TF.rgb_to_grayscale(x)).clamp(0, 1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    # The HSV round trip only for the samples whose hue moves (a fifth are not jittered).
    moved = (shift.flatten() != 0).nonzero().flatten()
    if moved.numel() == 0:
        return x
    hsv = rgb_to_hsv(x[moved])
    shifted = torch.remainder(hsv[:, 0] + shift[moved, 0], 1.0)
    out = x.clone()
    out[moved] = hsv_to_rgb(torch.stack([shifted, hsv[:, 1], hsv[:, 2]], dim=1))
    return out


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def color_jitter(
    x: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample torchvision adjust_brightness/contrast/saturation/hue. Factors are (N,)
    tensors; 1, 1, 1, 0 leave a sample unchanged (up to the HSV round trip, which only
    samples with a non-zero hue go through). `order` (N, 4) is a permutation of 0..3 per
    sample (0 brightness, 1 contrast, 2 saturation, 3 hue), as torchvision's ColorJitter
    draws one per call; None applies them in that order."""
    factors = [t.to(x.device, x.dtype).view(-1, 1, 1, 1) for t in (brightness, contrast, saturation, hue)]
    if order is None:
        for op, factor in zip(_JITTER_OPS, factors, strict=True):
            x = op(x, factor)
        return x
    # The samples that share an order go through its four adjustments together: one
    # gather and one scatter of the batch in all, at most 24 groups. The grouping runs on
    # the CPU, whatever x's device: CUDA has no int64 matmul, and reading the groups off
    # a GPU tensor would wait for the device once per group.
    order = order.cpu()
    codes = (order * torch.tensor([64, 16, 4, 1])).sum(1)
    out = torch.empty_like(x)
    for code in codes.unique().tolist():
        rows = (codes == code).nonzero().flatten()
        steps = order[rows[0]].tolist()
        rows = rows.to(x.device)
        y = x[rows]
        for k in steps:
            y = _JITTER_OPS[k](y, factors[k][rows])
        out[rows] = y
    return out


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur (sigma in pixels, (N,); 0 = unchanged) as one grouped
    separable convolution over all N * 3 channels, reflect padding."""
    n, c, hgt, wid = x.shape
    radius = max(1, min(int(math.ceil(3 * float(sigma.max()))), (min(hgt, wid) - 1) // 2))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    s = sigma.to(torch.float64).clamp(min=1e-6).view(-1, 1)
    kernel = torch.exp(-0.5 * (offsets / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel[sigma <= 0] = (offsets == 0).to(torch.float64)
    kernel = kernel.to(x.device, x.dtype).repeat_interleave(c, dim=0)  # (N*C, K)
    y = F.pad(x.reshape(1, n * c, hgt, wid), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, hgt, wid)


class MultiCrop:
    """Batch (B, 3, H, W) in [0, 1] -> [global crops (G*B, 3, Sg, Sg), local crops (L*B, 3,
    Sl, Sl)], augmented and normalized. The local group is absent when L = 0."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self.groups = [(cfg.global_crops, cfg.global_size, tuple(cfg.global_scale))]
        if cfg.local_crops > 0:
            self.groups.append((cfg.local_crops, cfg.local_size, tuple(cfg.local_scale)))

    @property
    def crops_per_group(self) -> list[int]:
        return [n for n, _, _ in self.groups]

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        return [self._group(images, n, size, scale, gen) for n, size, scale in self.groups]

    def _group(
        self, images: torch.Tensor, n: int, size: int, scale: tuple[float, float], gen: torch.Generator
    ) -> torch.Tensor:
        b = images.shape[0]
        theta = crop_matrices(n * b, scale, self.cfg, gen).to(images.device)
        source = images.repeat(n, 1, 1, 1)
        grid = F.affine_grid(theta, [n * b, images.shape[1], size, size], align_corners=False)
        x = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return self._photometric(x.clamp(0, 1), gen)

    def _photometric(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg, n = self.cfg, x.shape[0]
        if cfg.color_jitter > 0:
            on = (torch.rand(n, generator=gen) < cfg.color_jitter).double()
            s = 0.8 * cfg.color_strength
            factors = [1 + on * _uniform(n, -s, s, gen) for _ in range(3)]
            hue = on * _uniform(n, -0.2 * cfg.color_strength, 0.2 * cfg.color_strength, gen)
            order = torch.argsort(torch.rand(n, 4, generator=gen), dim=1)
            x = color_jitter(x, *factors, hue, order=order)
        if cfg.grayscale > 0:
            gray = (torch.rand(n, generator=gen) < cfg.grayscale).to(x.device).view(-1, 1, 1, 1)
            x = torch.where(gray, TF.rgb_to_grayscale(x, num_output_channels=3), x)
        if cfg.blur > 0:
            on = torch.rand(n, generator=gen) < cfg.blur
            sigma = torch.where(on, _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], gen), 0.0)
            if bool(on.any()):
                x = gaussian_blur(x, sigma)
        return TF.normalize(x, mean=list(cfg.mean), std=list(cfg.std))


# ------------------------------------------------------------------------ recipes

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# The digits recipe is AugmentConfig's defaults (configs/default.yaml): the embedded
# digits' statistics at 32 px and their geometry and colour settings.
_DIGITS = AugmentConfig()
DIGITS_MEAN, DIGITS_STD = _DIGITS.mean, _DIGITS.std
# SwAV's photo recipe (Caron et al. 2020, src/multicropdataset.py; SEER's VISSL configs):
# the settings beside the crop counts, sizes and scales.
PHOTO_RECIPE = dict(
    flip=0.5,
    color_jitter=0.8,
    color_strength=1.0,
    grayscale=0.2,
    blur=0.5,
    blur_sigma=[0.1, 2.0],
    rotation=0.0,
    shear=0.0,
    translate=0.0,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
DIGITS_RECIPE = {
    k: getattr(_DIGITS, k)
    for k in ("flip", "color_jitter", "grayscale", "blur", "rotation", "shear", "translate")
}


def _matches(cfg: AugmentConfig, recipe: dict) -> bool:
    return all(
        (
            all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(getattr(cfg, k), v, strict=True))
            if isinstance(v, list)
            else math.isclose(getattr(cfg, k), v, abs_tol=1e-6)
        )
        for k, v in recipe.items()
    )


def recipe_name(cfg: AugmentConfig) -> str:
    """ "SwAV photo recipe", "digits recipe" (its geometry and colour, any statistics) or
    "custom recipe"."""
    if _matches(cfg, PHOTO_RECIPE):
        return "SwAV photo recipe"
    if _matches(cfg, DIGITS_RECIPE):
        return "digits recipe"
    return "custom recipe"


def describe(cfg: AugmentConfig) -> str:
    """One line for the start-up banner: the recipe and what it does."""

    def stats() -> str:
        if _matches(cfg, dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)):
            return "ImageNet mean/std"
        if _matches(cfg, dict(mean=DIGITS_MEAN, std=DIGITS_STD)):
            return "the digits' mean/std"
        return f"mean {[round(v, 3) for v in cfg.mean]}, std {[round(v, 3) for v in cfg.std]}"

    parts = [
        f"random resized crops (global scale {cfg.global_scale[0]:g}-{cfg.global_scale[1]:g}"
        + (f", local {cfg.local_scale[0]:g}-{cfg.local_scale[1]:g}" if cfg.local_crops else "")
        + ")"
    ]
    if cfg.flip:
        parts.append(f"flip {cfg.flip:g}")
    if cfg.color_jitter:
        parts.append(f"colour jitter {cfg.color_jitter:g} at strength {cfg.color_strength:g}")
    if cfg.grayscale:
        parts.append(f"grayscale {cfg.grayscale:g}")
    if cfg.blur:
        parts.append(f"blur {cfg.blur:g} (sigma {cfg.blur_sigma[0]:g}-{cfg.blur_sigma[1]:g} px)")
    if cfg.rotation or cfg.shear or cfg.translate:
        parts.append(f"rotation {cfg.rotation:g} deg, shear {cfg.shear:g} deg, translation {cfg.translate:g}")
    parts.append(stats())
    return f"{recipe_name(cfg)}: " + ", ".join(parts)

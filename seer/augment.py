"""SwAV multi-crop augmentation applied to whole batches, with per-sample parameters.

Per-sample torchvision transforms cost 0.22 s per step of the digits default against 0.01 s
for the same work done on the batch tensor (issue 6), so every operation here takes the
(B, 3, H, W) batch at once, on whatever device it lives on (the GPU for large runs):

  geometry  one affine_grid + grid_sample per resolution: a random resized crop (area
            `scale`, aspect 3/4..4/3), horizontal flip, optional small rotation, shear and
            translation, composed into one 2x3 matrix per crop;
  colour    brightness, contrast, saturation (torchvision's blend formulas) and hue (in HSV)
            with per-sample factors, applied with probability `color_jitter` (fixed order,
            where torchvision shuffles it); grayscale with probability `grayscale`;
  blur      Gaussian blur with a per-sample sigma as one grouped separable convolution;
  normalize torchvision.transforms.v2.functional.normalize.

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
    area = _uniform(n, scale[0], scale[1], gen)
    log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), gen)
    w = torch.sqrt(area * torch.exp(log_ratio))
    h = torch.sqrt(area / torch.exp(log_ratio))
    # A crop that does not fit becomes the whole (square) image: torchvision's fallback
    # after its 10 rejected draws (we fall back at once instead of redrawing).
    outside = (w > 1) | (h > 1)
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
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, rgb in enumerate(choices):
        mask = (i == k).unsqueeze(1)
        out = torch.where(mask, torch.stack(rgb, dim=1), out)
    return out


def color_jitter(
    x: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
) -> torch.Tensor:
    """Per-sample torchvision adjust_brightness/contrast/saturation/hue, in that order.
    Factors are (N,) tensors; 1, 1, 1, 0 leave a sample unchanged (up to the HSV round
    trip, which only samples with a non-zero hue go through)."""
    col = lambda t: t.to(x.device, x.dtype).view(-1, 1, 1, 1)
    x = (x * col(brightness)).clamp(0, 1)
    mean = TF.rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (col(contrast) * x + (1 - col(contrast)) * mean).clamp(0, 1)
    x = (col(saturation) * x + (1 - col(saturation)) * TF.rgb_to_grayscale(x)).clamp(0, 1)
    moved = hue != 0
    if bool(moved.any()):
        hsv = rgb_to_hsv(x)
        shifted = torch.remainder(hsv[:, 0] + col(hue)[:, 0], 1.0)
        rotated = hsv_to_rgb(torch.stack([shifted, hsv[:, 1], hsv[:, 2]], dim=1))
        x = torch.where(col(moved.to(x.dtype)) > 0, rotated, x)
    return x


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
            x = color_jitter(x, *factors, hue)
        if cfg.grayscale > 0:
            gray = (torch.rand(n, generator=gen) < cfg.grayscale).to(x.device).view(-1, 1, 1, 1)
            x = torch.where(gray, TF.rgb_to_grayscale(x, num_output_channels=3), x)
        if cfg.blur > 0:
            on = torch.rand(n, generator=gen) < cfg.blur
            sigma = torch.where(on, _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], gen), 0.0)
            if bool(on.any()):
                x = gaussian_blur(x, sigma)
        return TF.normalize(x, mean=list(cfg.mean), std=list(cfg.std))

"""Common corruptions of uint8 image batches: a shifted test set at fixed severities.

After Hendrycks & Dietterich 2019 (CIFAR-10-C / ImageNet-C), simplified to four corruptions
that need nothing but tensor arithmetic, so they run batched on whatever device holds the
images. Each works in float [0, 1] units and returns rounded, clipped uint8 of the same shape.

- gaussian_noise: x + N(0, std^2), independently per pixel and channel.
- gaussian_blur: separable Gaussian filter; borders repeat the edge pixel (scikit-image's
  default "nearest" mode, which the original used), so any image size works.
- contrast: (x - m) * c + m, with m the mean of each image and channel (as the original).
- brightness: x + b on every channel. The original adds b to the V channel in HSV space; a
  plain shift keeps the module free of colour-space code and also works on grey images.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "gaussian_blur", "contrast", "brightness")
SEVERITIES: tuple[int, ...] = (1, 3, 5)  # the fixed severities evaluated

# Parameters for severities 1..5. Noise and blur are CIFAR-10-C's; contrast and brightness are
# ImageNet-C's, a stronger shift than CIFAR-10-C's milder constants.
NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)  # standard deviation, [0, 1] units
BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)  # pixels
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)  # the share of each image's contrast kept
BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)  # added, [0, 1] units

# Images per step: bounds the float working copy (4 bytes a pixel, plus the noise) whatever
# the size of the split, so a whole test split can go through one call.
_CHUNK = 1024


def corrupt(x: torch.Tensor, name: str, severity: int, *, seed: int = 0) -> torch.Tensor:
    """`x` (uint8, (N, C, H, W)) under corruption `name` at `severity` 1..5, on x's device.

    Deterministic for a seed: the noise comes from one CPU generator seeded with `seed` and
    is moved to the device, so the same images get the same noise on any device. An image's
    noise depends on its place in `x`: corrupt a whole split in one call (memory stays
    bounded), not batch by batch, for a shifted set independent of the evaluation batch size.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty_like(x)
    for start in range(0, len(x), _CHUNK):
        xf = x[start : start + _CHUNK].float() / 255.0
        xf = _apply(xf, name, severity - 1, generator)
        out[start : start + _CHUNK] = xf.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out


def _apply(x: torch.Tensor, name: str, level: int, generator: torch.Generator) -> torch.Tensor:
    if name == "gaussian_noise":
        noise = torch.randn(x.shape, generator=generator) * NOISE_STD[level]
        return x + noise.to(x.device)
    if name == "gaussian_blur":
        return _blur(x, BLUR_SIGMA[level])
    if name == "contrast":
        mean = x.mean(dim=(2, 3), keepdim=True)
        return (x - mean) * CONTRAST_FACTOR[level] + mean
    return x + BRIGHTNESS_SHIFT[level]  # brightness


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of float (N, C, H, W), one channel at a time, rows then columns."""
    radius = math.ceil(3 * sigma)  # kernel of 2 * radius + 1 taps: odd, covers +-3 sigma
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    n, c, h, w = x.shape
    flat = x.reshape(n * c, 1, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))  # along rows
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))  # along columns
    return flat.reshape(n, c, h, w)

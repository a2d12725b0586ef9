"""DINOv2 multi-crop augmentation with Pillow and torch only.

Each image yields 2 global crops (large, scale 0.32-1) and several local crops (small, scale
0.05-0.32). The student sees all of them, the teacher only the global ones, so the student learns
to predict a whole-image representation from a small part. Geometry (random resized crop,
bicubic, flip) runs in Pillow; the colour operations run on float tensors in [0, 1], which is
faster than round-tripping through PIL images. Every random draw comes from one optional
``torch.Generator``, so a seed fixes the output.

Blur probabilities: the paper gives global crop 1 / global crop 2 / local crops 1.0 / 0.1 / 0.5.
The official code passes 1 - p to its blur, so the released checkpoints were trained with
0.0 / 0.9 / 0.5; ``blur_mode="official"`` reproduces that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)


# ---- random helpers -------------------------------------------------------------------------------


def _rand(generator: torch.Generator | None) -> float:
    return torch.rand((), generator=generator, dtype=torch.float64).item()


def _uniform(a: float, b: float, generator: torch.Generator | None) -> float:
    return a + (b - a) * _rand(generator)


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Integer in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


# ---- geometry --------------------------------------------------------------------------------------


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a crop covering a random fraction ``scale`` of the area with a
    log-uniform aspect ratio in ``ratio``; after 10 failed draws, the largest centred crop whose
    aspect ratio lies in ``ratio`` (the usual RandomResizedCrop rule)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(0, height - h, generator)
            left = _randint(0, width - w, generator)
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W) in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


# ---- colour operations on (3, H, W) float tensors in [0, 1] ---------------------------------------


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601), shape (1, H, W)."""
    r, g, b = x.unbind(0)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(0)


def _blend(x: torch.Tensor, other: torch.Tensor | float, factor: float) -> torch.Tensor:
    return (factor * x + (1.0 - factor) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(x, 0.0, factor)


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean grey level of the image."""
    return _blend(x, grayscale(x).mean(), factor)


def adjust_saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the grayscale version of the image."""
    return _blend(x, grayscale(x), factor)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB -> HSV, all channels in [0, 1]."""
    r, g, b = x.unbind(0)
    value, argmax = x.max(dim=0)
    chroma = value - x.min(dim=0).values
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    safe_value = torch.where(value > 0, value, torch.ones_like(value))
    sat = torch.where(value > 0, chroma / safe_value, torch.zeros_like(value))
    hue_r = torch.remainder((g - b) / safe_chroma, 6.0)
    hue_g = (b - r) / safe_chroma + 2.0
    hue_b = (r - g) / safe_chroma + 4.0
    hue = torch.where(argmax == 0, hue_r, torch.where(argmax == 1, hue_g, hue_b))
    hue = torch.where(chroma > 0, hue / 6.0, torch.zeros_like(hue))
    return torch.stack([hue, sat, value])


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) HSV -> RGB. Channel n in (5, 3, 1) for (R, G, B) is
    v - v*s*clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6."""
    hue, sat, value = x.unbind(0)
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(3, 1, 1)
    k = torch.remainder(offsets + 6.0 * hue, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return value - value * sat * ramp


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5])."""
    hsv = rgb_to_hsv(x)
    hsv[0] = torch.remainder(hsv[0] + shift, 1.0)
    return hsv_to_rgb(hsv).clamp_(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: int = 9) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (kernel shrunk for images smaller than it)."""
    radius = min(kernel_size // 2, x.shape[-1] - 1, x.shape[-2] - 1)
    if radius <= 0:
        return x
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[0]
    y = F.pad(x.unsqueeze(0), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    y = F.conv2d(y, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return y.squeeze(0)


def solarize(x: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    """Invert the pixels at or above ``threshold`` (128 on the 0-255 scale)."""
    return torch.where(x >= threshold, 1.0 - x, x)


def normalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s


# ---- one crop ------------------------------------------------------------------------------------


@dataclass
class CropParams:
    """Every random decision for one crop; ``None`` means the step is skipped."""

    box: tuple[int, int, int, int]  # left, top, width, height in the source image
    size: int
    flip: bool
    jitter: tuple[list[int], tuple[float, float, float, float]] | None  # order, (b, c, s, h)
    gray: bool
    blur_sigma: float | None
    solarize: bool


class MultiCropAugmentation:
    """``aug(image, generator=None) -> {"global_crops": [...], "local_crops": [...]}``.

    Crops are normalised float32 (3, size, size) tensors. Global crop i >= 1 uses the settings of
    global crop 2 (blur 0.1, solarisation 0.2). For small images (e.g. 28x28 Fashion-MNIST) set
    the crop sizes to what the model expects; the crops are resized up with bicubic filtering.
    """

    def __init__(
        self,
        global_crops_size: int = 224,
        local_crops_size: int = 98,
        n_global_crops: int = 2,
        n_local_crops: int = 8,
        global_crops_scale: tuple[float, float] = (0.32, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.32),
        hflip_p: float = 0.5,
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        grayscale_p: float = 0.2,
        global1_blur_p: float = 1.0,
        global2_blur_p: float = 0.1,
        local_blur_p: float = 0.5,
        blur_mode: Literal["paper", "official"] = "paper",
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel_size: int = 9,
        solarize_p: float = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if blur_mode not in ("paper", "official"):
            raise ValueError(f"blur_mode must be 'paper' or 'official', got {blur_mode!r}")
        if n_global_crops < 1:
            raise ValueError("need at least one global crop")
        self.global_crops_size = global_crops_size
        self.local_crops_size = local_crops_size
        self.n_global_crops = n_global_crops
        self.n_local_crops = n_local_crops
        self.global_crops_scale = global_crops_scale
        self.local_crops_scale = local_crops_scale
        self.hflip_p = hflip_p
        self.jitter_p = jitter_p
        self.jitter_strength = (brightness, contrast, saturation, hue)
        self.grayscale_p = grayscale_p
        # The official code applies the blur with probability 1 - p.
        flip_p = (lambda p: 1.0 - p) if blur_mode == "official" else (lambda p: p)
        self.blur_p = (flip_p(global1_blur_p), flip_p(global2_blur_p), flip_p(local_blur_p))
        self.blur_sigma = blur_sigma
        self.blur_kernel_size = blur_kernel_size
        self.solarize_p = solarize_p
        self.mean, self.std = tuple(mean), tuple(std)

    def sample_params(
        self,
        width: int,
        height: int,
        size: int,
        scale: tuple[float, float],
        blur_p: float,
        solarize_p: float,
        generator: torch.Generator | None = None,
    ) -> CropParams:
        box = random_resized_crop_box(width, height, scale, generator=generator)
        flip = _rand(generator) < self.hflip_p
        jitter = None
        if _rand(generator) < self.jitter_p:
            order = torch.randperm(4, generator=generator).tolist()
            b, c, s, h = self.jitter_strength
            factors = (
                _uniform(max(0.0, 1 - b), 1 + b, generator),
                _uniform(max(0.0, 1 - c), 1 + c, generator),
                _uniform(max(0.0, 1 - s), 1 + s, generator),
                _uniform(-h, h, generator),
            )
            jitter = (order, factors)
        gray = _rand(generator) < self.grayscale_p
        sigma = _uniform(*self.blur_sigma, generator) if _rand(generator) < blur_p else None
        sol = _rand(generator) < solarize_p
        return CropParams(box, size, flip, jitter, gray, sigma, sol)

    def render(self, image: Image.Image, params: CropParams) -> torch.Tensor:
        left, top, w, h = params.box
        crop = image.resize(
            (params.size, params.size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h)
        )
        x = to_tensor(crop)
        if params.flip:
            x = x.flip(-1)
        if params.jitter is not None:
            order, (bf, cf, sf, hf) = params.jitter
            ops = (
                lambda t: adjust_brightness(t, bf),
                lambda t: adjust_contrast(t, cf),
                lambda t: adjust_saturation(t, sf),
                lambda t: adjust_hue(t, hf),
            )
            for i in order:
                x = ops[i](x)
        if params.gray:
            x = grayscale(x).expand(3, -1, -1).contiguous()
        if params.blur_sigma is not None:
            x = gaussian_blur(x, params.blur_sigma, self.blur_kernel_size)
        if params.solarize:
            x = solarize(x)
        return normalize(x, self.mean, self.std)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> dict[str, list[torch.Tensor]]:
        image = image.convert("RGB")
        width, height = image.size
        global_crops = []
        for i in range(self.n_global_crops):
            first = i == 0
            params = self.sample_params(
                width,
                height,
                self.global_crops_size,
                self.global_crops_scale,
                self.blur_p[0] if first else self.blur_p[1],
                0.0 if first else self.solarize_p,
                generator,
            )
            global_crops.append(self.render(image, params))
        local_crops = [
            self.render(
                image,
                self.sample_params(
                    width, height, self.local_crops_size, self.local_crops_scale, self.blur_p[2], 0.0, generator
                ),
            )
            for _ in range(self.n_local_crops)
        ]
        return {"global_crops": global_crops, "local_crops": local_crops}

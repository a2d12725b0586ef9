"""Image -> tensor transforms for inference: short-side resize, center crop, normalisation.

Kept as a small picklable object so DataLoader workers can decode and transform without
holding the model.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def round_to_multiple(size: int, multiple: int) -> int:
    """Nearest multiple of ``multiple`` that is at least ``multiple`` (ViT inputs must tile into patches)."""
    return max(multiple, int(round(size / multiple)) * multiple)


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to ``resize_size``, center-crop ``crop_size``, scale to [0,1], normalise.

    ``grayscale`` gives one channel (the pixel descriptor); otherwise RGB with ``mean``/``std``.
    """

    crop_size: int
    resize_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    grayscale: bool = False

    def __post_init__(self) -> None:
        if self.crop_size < 1 or self.resize_size < self.crop_size:
            raise ValueError(f"need 1 <= crop_size <= resize_size, got {self.crop_size}, {self.resize_size}")

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("L" if self.grayscale else "RGB")
        w, h = img.size
        scale = self.resize_size / min(w, h)
        nw, nh = max(self.crop_size, round(w * scale)), max(self.crop_size, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - self.crop_size) // 2, (nh - self.crop_size) // 2
        img = img.crop((left, top, left + self.crop_size, top + self.crop_size))
        arr = np.asarray(img, dtype=np.float32) / 255.0
        if arr.ndim == 2:
            arr = arr[:, :, None]
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def from_bytes(self, data: bytes) -> torch.Tensor:
        """Decode encoded image bytes (JPEG, PNG, ...) and transform them."""
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return self(img)

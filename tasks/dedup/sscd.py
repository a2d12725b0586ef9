"""SSCD copy-detection descriptors from a TorchScript file (``*.torchscript.pt``).

The file is read through ``storage.uri`` (local path, ``file://`` or ``s3://``) and loaded with
``torch.jit.load``; no SSCD code is needed. Preprocessing is the one the SSCD authors
recommend for inference: short side resized to 288 with the aspect ratio kept, or a 320x320
square (faster batches on GPU, aspect skewed), then ImageNet mean/std normalisation. Outputs are
L2-normalised. Loading runs the model once on a dummy image, so a wrong file or a model with
the wrong output shape is a configuration error before any shard is touched.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from typing import Literal

import numpy as np
import torch
from PIL import Image

from storage.uri import read_bytes
from lvd.errors import LvdError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DINOv2 (App. A.3) thresholds on SSCD cosine similarity.
SSCD_COPY_THRESHOLD = 0.6
SSCD_EVAL_THRESHOLD = 0.45


class CopyModelError(LvdError, ValueError):
    """The configured copy-detection model is missing, unreadable or produces the wrong shape."""


def sscd_input_size(width: int, height: int, resize: Literal["short288", "square320"]) -> tuple[int, int]:
    """``(width, height)`` the image is resized to before it enters the network."""
    if resize == "square320":
        return 320, 320
    short = min(width, height)
    scale = 288 / short
    # torchvision's Resize(288) rounds the long side down (int()), which this follows.
    if width <= height:
        return 288, max(1, int(height * scale))
    return max(1, int(width * scale)), 288


def to_tensor(img: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """``(3, h, w)`` float tensor, resized (bilinear, antialiased) and ImageNet-normalised."""
    img = img.convert("RGB")
    if img.size != size:
        img = img.resize(size, Image.BILINEAR)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (arr - mean) / std


class SscdEmbedder:
    """Callable: list of PIL images -> ``(n, dim)`` float32 L2-normalised SSCD descriptors.

    Images are batched by input size (all of them with ``square320``), so a batch is one forward pass.
    """

    copy_threshold = SSCD_COPY_THRESHOLD
    eval_threshold = SSCD_EVAL_THRESHOLD
    min_side = 288

    def __init__(self, uri: str, resize: Literal["short288", "square320"] = "short288",
                 expected_dim: int | None = None, device: str = "cpu"):
        try:
            data = read_bytes(uri)
        except FileNotFoundError as exc:
            raise CopyModelError(f"copy-detection model {uri} does not exist") from exc
        try:
            self.module = torch.jit.load(io.BytesIO(data), map_location=device).eval()
        except Exception as exc:
            raise CopyModelError(f"copy-detection model {uri} is not a TorchScript file: {exc}") from exc
        self.uri = uri
        self.resize = resize
        self.device = torch.device(device)
        self.checksum = hashlib.sha256(data).hexdigest()
        self.model_id = f"sscd:{uri.rstrip('/').rsplit('/', 1)[-1]}"
        probe = self._forward(torch.zeros((1, 3, 288, 288)) if resize == "short288" else torch.zeros((1, 3, 320, 320)))
        if probe.ndim != 2 or probe.shape[0] != 1:
            raise CopyModelError(f"copy-detection model {uri} returns shape {tuple(probe.shape)} for one image; expected (1, dim)")
        self.dim = int(probe.shape[1])
        if expected_dim is not None and self.dim != expected_dim:
            raise CopyModelError(f"copy-detection model {uri} returns {self.dim}-d descriptors, expected {expected_dim}")

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        try:
            with torch.inference_mode():
                out = self.module(batch.to(self.device))
        except Exception as exc:
            raise CopyModelError(f"copy-detection model {self.uri} failed on a {tuple(batch.shape)} batch: {exc}") from exc
        if not isinstance(out, torch.Tensor):
            raise CopyModelError(f"copy-detection model {self.uri} returned {type(out).__name__}, not a tensor")
        return out.float().cpu()

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            by_size[sscd_input_size(img.width, img.height, self.resize)].append(i)
        for size, idx in by_size.items():
            batch = torch.stack([to_tensor(images[i], size) for i in idx])
            feats = self._forward(batch)
            if feats.shape != (len(idx), self.dim):
                raise CopyModelError(f"copy-detection model {self.uri} returned {tuple(feats.shape)} for {len(idx)} images")
            out[idx] = torch.nn.functional.normalize(feats, dim=1).numpy()
        return out

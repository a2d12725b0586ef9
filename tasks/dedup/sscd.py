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
import re
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


def traced_batch_size(module: torch.jit.ScriptModule) -> int | None:
    """The batch size a traced module's code splits its input into (``split_with_sizes(x, [1, 1, ...])``), if any."""
    for sub in module.modules():
        try:
            code = sub.code
        except Exception:  # modules without TorchScript code of their own
            continue
        found = re.search(r"split_with_sizes\(\s*\w+\s*,\s*\[([\d,\s]+)\]\s*\)", code)
        if found:
            return sum(int(v) for v in found.group(1).split(",") if v.strip())
    return None


class SscdEmbedder:
    """Callable: list of PIL images -> ``(n, dim)`` float32 L2-normalised SSCD descriptors.

    Images are batched by input size (all of them with ``square320``), so a batch is one forward pass.
    """

    copy_threshold = SSCD_COPY_THRESHOLD
    eval_threshold = SSCD_EVAL_THRESHOLD
    min_side = 288

    def __init__(self, uri: str, resize: Literal["short288", "square320"] = "short288",
                 expected_dim: int | None = None, device: str = "cpu", data: bytes | None = None):
        try:
            data = read_bytes(uri) if data is None else data
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
        probe = self._probe()
        self.dim = int(probe.shape[1])
        if expected_dim is not None and self.dim != expected_dim:
            raise CopyModelError(f"copy-detection model {uri} returns {self.dim}-d descriptors, expected {expected_dim}")

    def _probe(self) -> torch.Tensor:
        """Run batches of one and of two dummy images; refuse a model that only works at one batch size.

        The stage batches images by input size, so every batch size from 1 up occurs. A module made
        with ``torch.jit.trace`` keeps the example's batch size wherever its code split or reshaped
        the batch; it then fails (or returns the wrong number of rows) at any other size.
        """
        side = 288 if self.resize == "short288" else 320
        traced = traced_batch_size(self.module)
        results: dict[int, torch.Tensor | CopyModelError] = {}
        for n in sorted({1, 2, traced or 1}):
            try:
                results[n] = self._forward(torch.zeros((n, 3, side, side)))
            except CopyModelError as exc:
                results[n] = exc
        if all(isinstance(out, CopyModelError) for out in results.values()):
            raise results[1]
        one, two = results[1], results[2]
        for n, out in results.items():
            if isinstance(out, torch.Tensor) and out.ndim != 2:
                raise CopyModelError(
                    f"copy-detection model {self.uri} returns shape {tuple(out.shape)} for {n} image(s); expected ({n}, dim)"
                )
        if any(isinstance(out, CopyModelError) or out.shape[0] != n for n, out in results.items()):
            raise CopyModelError(self._fixed_batch_message(results))
        if one.shape[1] != two.shape[1] or not torch.allclose(
            torch.nn.functional.normalize(two, dim=1), torch.nn.functional.normalize(one, dim=1).expand_as(two), atol=1e-3
        ):
            raise CopyModelError(
                f"copy-detection model {self.uri} gives the same image different descriptors in batches of 1 and 2; "
                "an image's descriptor must not depend on the rest of its batch (export the model in eval mode)"
            )
        return one

    def _fixed_batch_message(self, results: dict) -> str:
        def said(n: int) -> str:
            out = results[n]
            if isinstance(out, torch.Tensor):
                return f"a batch of {n} gives {tuple(out.shape)}"
            cause = str(out.__cause__ or out).strip().splitlines()
            return f"a batch of {n} fails ({cause[-1][:200] if cause else type(out).__name__})"

        traced = traced_batch_size(self.module)
        at = f" (its graph splits its input into a batch of {traced})" if traced else ""
        return (
            f"copy-detection model {self.uri} only works at the batch size it was traced with{at}: "
            f"{', '.join(said(n) for n in sorted(results))}. The stage sends batches of any size from 1 up; export the model with "
            "torch.jit.script, or trace it with code that does not split or reshape by the batch size"
        )

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

"""Copy-detection descriptors from any model lvd loads (``tasks.release.load.load_model``).

A run, a checkpoint, ``backbone.pt``, an ``lvd export`` or an official DINOv2 / timm state dict
becomes a copy model: the image is resized whole to a square at the model's training resolution
(no centre crop, so the parts of a padded, framed or cropped copy that a crop would cut stay in
view) and ImageNet-normalised; the feature is :func:`models.pooling.cls_gem_feature` (CLS and
GeM-pooled patch tokens), or, for a detector lvd trained (its ``copy_head``), that feature
through the head's projection. Rows are L2-normalised.

A model lvd trained as a copy detector also records its calibrated cosine thresholds, which the
stage uses where the config leaves them unset.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.pooling import cls_gem_feature
from tasks.dedup.sscd import to_tensor
from tasks.embed.backbone import state_dict_checksum
from tasks.embed.preprocess import round_to_multiple
from tasks.release.load import LoadedModel

DEFAULT_SIZE = 224


def _attr(model: torch.nn.Module, name: str, default: int) -> int:
    value = getattr(model, name, default)
    return int(value[0] if isinstance(value, (tuple, list)) else value)


class ModelCopyEmbedder:
    """Callable: list of PIL images -> ``(n, dim)`` float32 L2-normalised copy descriptors of a ViT."""

    def __init__(self, loaded: LoadedModel, checksum: str | None = None, device: str = "cpu",
                 image_size: int | None = None) -> None:
        self.device = torch.device(device)
        self.backbone = loaded.backbone.to(self.device).eval()
        head = loaded.heads.get("copy_head")
        self.projection = head.to(self.device).eval() if head is not None else None
        patch = _attr(self.backbone, "patch_size", 14)
        self.size = round_to_multiple(image_size or loaded.image_size or DEFAULT_SIZE, patch)
        self.min_side = self.size
        self.model_id = f"copy:{loaded.model_id or loaded.source}"
        state = dict(self.backbone.state_dict())
        if self.projection is not None:
            state.update({f"copy_head.{k}": v for k, v in self.projection.state_dict().items()})
        self.checksum = checksum or state_dict_checksum(state)
        calibration = (loaded.meta or {}).get("copy_detector", {}).get("calibration", {})
        if calibration.get("copy_threshold") is not None:
            self.copy_threshold = float(calibration["copy_threshold"])
        if calibration.get("eval_threshold") is not None:
            self.eval_threshold = float(calibration["eval_threshold"])
        with torch.inference_mode():
            self.dim = int(self._features(torch.zeros(1, 3, self.size, self.size, device=self.device)).shape[1])

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        feat = cls_gem_feature(self.backbone.forward_features(batch))
        if self.projection is not None:
            feat = self.projection(feat)
        return F.normalize(feat.float(), dim=1)

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = torch.stack([to_tensor(img, (self.size, self.size)) for img in images]).to(self.device)
        with torch.inference_mode():
            return self._features(batch).cpu().numpy().astype(np.float32)


def model_copy_embedder(loaded: LoadedModel, data: bytes | None, device: str = "cpu") -> ModelCopyEmbedder:
    """The copy embedder of a loaded model; its checksum is the file's sha256 where there is one file."""
    return ModelCopyEmbedder(loaded, hashlib.sha256(data).hexdigest() if data is not None else None, device)

"""The copy-detection descriptor interface and the loader that picks an implementation.

An embedder is any callable ``images (list of PIL) -> (n, dim) float32, L2-normalised rows``
with ``dim`` and ``model_id`` attributes. Optional attributes: ``min_side`` (smallest short side
the decoder must deliver), ``copy_threshold`` / ``eval_threshold`` (the model's calibrated
cosine operating points) and ``checksum``. ``dedup.copy_model`` names ``builtin:dct``, a
TorchScript file (:class:`tasks.dedup.sscd.SscdEmbedder`) or any model lvd loads
(:class:`tasks.dedup.model_copy.ModelCopyEmbedder`); a ``tasks.embed`` embedder plugs in through
:func:`from_tensor_embedder`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from lvd.errors import LvdError

from storage.uri import read_bytes
from tasks.dedup.config import DedupConfig
from tasks.dedup.descriptor import DctColourEmbedder
from tasks.dedup.model_copy import model_copy_embedder
from tasks.dedup.sscd import SSCD_COPY_THRESHOLD, SSCD_EVAL_THRESHOLD, CopyModelError, SscdEmbedder
from tasks.release.load import is_torchscript, load_model, model_from_bytes

BUILTIN_DCT = "builtin:dct"


@runtime_checkable
class CopyEmbedder(Protocol):
    dim: int
    model_id: str

    def __call__(self, images: list[Image.Image]) -> np.ndarray: ...


def load_copy_embedder(cfg: DedupConfig, device: str = "cpu") -> CopyEmbedder | None:
    """The embedder ``cfg.copy_model`` names (None when copy detection is off), probed once."""
    if cfg.copy_model is None:
        return None
    if cfg.copy_model == BUILTIN_DCT:
        return DctColourEmbedder()
    if cfg.copy_model.startswith("builtin:"):
        raise CopyModelError(f"unknown built-in copy model {cfg.copy_model!r}; known: {BUILTIN_DCT!r}")
    return open_copy_model(cfg.copy_model, cfg.copy_resize, device)


def open_copy_model(uri: str, resize: str = "short288", device: str = "cpu") -> CopyEmbedder:
    """A TorchScript file (SSCD's call shape) or any model ``tasks.release.load`` opens, by contents."""
    try:
        data = None if uri.lower().endswith(".safetensors") else read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError):  # a run or checkpoint directory (or nothing)
        data = None
    if data is not None and is_torchscript(data):
        return SscdEmbedder(uri, resize=resize, device=device, data=data)
    try:
        loaded = load_model(uri) if data is None else model_from_bytes(data, uri)
    except FileNotFoundError as exc:
        raise CopyModelError(f"copy-detection model {uri} does not exist") from exc
    except (LvdError, ValueError) as exc:
        raise CopyModelError(f"copy-detection model {uri} is neither a TorchScript file nor a model lvd loads: {exc}") from exc
    return model_copy_embedder(loaded, data, device)


def check_embedder(embedder: CopyEmbedder) -> None:
    """Run one dummy image through ``embedder``; a wrong shape or unnormalised rows is an error now."""
    dummy = Image.new("RGB", (320, 240), (127, 96, 64))
    out = np.asarray(embedder([dummy]))
    if out.shape != (1, embedder.dim):
        raise CopyModelError(f"{embedder.model_id} returned {out.shape} for one image, expected (1, {embedder.dim})")
    norm = float(np.linalg.norm(out[0]))
    if not np.isfinite(out).all() or abs(norm - 1.0) > 1e-3:
        raise CopyModelError(f"{embedder.model_id} returned a descriptor of norm {norm:.4f}; rows must be L2-normalised")


def thresholds(cfg: DedupConfig, embedder: CopyEmbedder) -> tuple[float, float]:
    """(self-dedup, eval-set) cosine thresholds: the config's, else the model's, else DINOv2's."""
    copy = cfg.copy_threshold if cfg.copy_threshold is not None else getattr(embedder, "copy_threshold", SSCD_COPY_THRESHOLD)
    evals = cfg.eval_threshold if cfg.eval_threshold is not None else getattr(embedder, "eval_threshold", SSCD_EVAL_THRESHOLD)
    return float(copy), float(evals)


class TensorEmbedderAdapter:
    """Adapt an embedder that takes a preprocessed tensor batch (``tasks.embed``) to PIL input."""

    def __init__(self, embedder) -> None:
        self._inner = embedder
        self.dim = int(embedder.dim)
        self.model_id = str(embedder.model_id)
        self.checksum = getattr(embedder, "checksum", "")
        self.min_side = int(getattr(embedder, "image_size", 224))

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = torch.stack([self._inner.preprocess(img.convert("RGB")) for img in images])
        out = self._inner(batch)
        out = out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        return out.astype(np.float32)


def from_tensor_embedder(embedder) -> TensorEmbedderAdapter:
    """A :class:`CopyEmbedder` over a ``tasks.embed`` embedder (its own preprocessing, PIL in)."""
    return TensorEmbedderAdapter(embedder)

"""Turn a backbone URI or spec into an :class:`Embedder`: one call shape for every model source.

Sources (detected from the spec, then from the file's contents):

* ``pixels:<size>``: mean-centred, L2-normalised grayscale pixels of a ``size``x``size`` crop.
  A weak but deterministic descriptor that needs no weights, for tests and bootstrapping.
* ``random:<preset>[@seed]``: a randomly initialised ViT from ``models.vit`` (seeded).
* a TorchScript archive (``torch.jit.load``), e.g. an exported SSCD or DINOv2 model;
* anything ``tasks.release.load`` (the one model loader) opens: a run or checkpoint directory,
  ``runs/{run}/backbone.pt``, an ``lvd export``, an official DINOv2 or timm ViT state dict.

Files may be local paths, ``file://`` or ``s3://`` URIs. The checksum is the sha256 of the file's
bytes (of the spec, or of the weights, where there is no single file), so the embed commit pins
exactly which weights produced the vectors.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Callable

import numpy as np
import torch

from storage.uri import basename, read_bytes
from tasks.release.load import is_torchscript, load_model, model_from_bytes
from tasks.embed.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, round_to_multiple

DEFAULT_RESIZE_RATIO = 256 / 224


def l2_normalise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows scaled to unit norm (all-zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


class Embedder:
    """Batched feature extractor: ``embedder(batch) -> (n, dim)`` float32, L2-normalised rows.

    ``preprocess`` maps one PIL image to the tensor the model expects; it holds no model, so it
    can run in DataLoader workers.
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        preprocess: Preprocess,
        dim: int,
        model_id: str,
        checksum: str,
        device: torch.device,
        autocast_bf16: bool = True,
        module: torch.nn.Module | None = None,
    ) -> None:
        self._forward = forward
        self.preprocess = preprocess
        self.dim = int(dim)
        self.model_id = model_id
        self.checksum = checksum
        self.device = device
        self.autocast_bf16 = autocast_bf16
        self.module = module

    @property
    def image_size(self) -> int:
        return self.preprocess.crop_size

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        use_bf16 = self.autocast_bf16 and self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = self._forward(batch)
        out = l2_normalise(out.float())
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise RuntimeError(f"{self.model_id} produced features of shape {tuple(out.shape)}, expected (n, {self.dim})")
        return out.cpu()

    def describe(self) -> dict:
        """Small JSON-able identity for commits and summaries."""
        return {"model_id": self.model_id, "checksum": self.checksum, "dim": self.dim, "image_size": self.image_size}


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resize_for(crop: int, ratio: float) -> int:
    return max(crop, int(round(crop * ratio)))


# ---------------------------------------------------------------------------- pixel descriptor

def _pixel_forward(batch: torch.Tensor) -> torch.Tensor:
    flat = batch.flatten(1).float()
    return flat - flat.mean(dim=1, keepdim=True)


def pixel_embedder(size: int, device: torch.device, resize_ratio: float = 1.0) -> Embedder:
    """Normalised-pixel descriptor: a deterministic stand-in when no trained model exists."""
    if not 4 <= size <= 256:
        raise ValueError(f"pixels:<size> needs 4 <= size <= 256, got {size}")
    pre = Preprocess(size, _resize_for(size, resize_ratio), mean=(0.0,), std=(1.0,), grayscale=True)
    spec = f"pixels:{size}"
    return Embedder(_pixel_forward, pre, size * size, spec, hashlib.sha256(spec.encode()).hexdigest(),
                    torch.device("cpu") if device.type != "cuda" else device)


# ---------------------------------------------------------------------------- ViT backbones

def _vit_forward(model: torch.nn.Module, features: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(batch: torch.Tensor) -> torch.Tensor:
        out = model.forward_features(batch)
        cls = out["x_norm_clstoken"]
        if features == "cls":
            return cls
        pooled = out["x_norm_patchtokens"].mean(dim=1)
        return torch.cat([l2_normalise(cls.float()), l2_normalise(pooled.float())], dim=1)

    return forward


def state_dict_checksum(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def vit_embedder(
    model: torch.nn.Module,
    model_id: str,
    checksum: str,
    device: torch.device,
    features: str = "cls",
    image_size: int | None = None,
    resize_ratio: float = DEFAULT_RESIZE_RATIO,
    autocast_bf16: bool = True,
) -> Embedder:
    """Wrap a ``models.vit`` backbone (anything with ``forward_features`` returning DINOv2's dict)."""
    if features not in ("cls", "cls+avgpool"):
        raise ValueError(f"features must be 'cls' or 'cls+avgpool', got {features!r}")
    patch = int(_model_attr(model, "patch_size", 14))
    size = round_to_multiple(image_size or int(_model_attr(model, "img_size", 224)), patch)
    embed_dim = int(_model_attr(model, "embed_dim", 0))
    if embed_dim <= 0:
        raise ValueError(f"{model_id}: the backbone does not expose embed_dim")
    model = model.to(device).eval()
    dim = embed_dim * (2 if features == "cls+avgpool" else 1)
    pre = Preprocess(size, _resize_for(size, resize_ratio), IMAGENET_MEAN, IMAGENET_STD)
    return Embedder(_vit_forward(model, features), pre, dim, model_id, checksum, device, autocast_bf16, model)


def _model_attr(model: torch.nn.Module, name: str, default):
    value = getattr(model, name, default)
    if isinstance(value, (tuple, list)):
        value = value[0]
    return value


def random_vit_embedder(spec: str, device: torch.device, **kw) -> Embedder:
    """``random:<preset>[@seed]``: a seeded random-init ViT (no file needed)."""
    from models.presets import build_vit

    body = spec.split(":", 1)[1]
    preset, _, seed_text = body.partition("@")
    seed = int(seed_text) if seed_text else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_vit(preset)
    checksum = state_dict_checksum(model.state_dict())
    return vit_embedder(model, f"random:{preset}@{seed}", checksum, device, **kw)


# ---------------------------------------------------------------------------- dispatch

_RANDOM_RE = re.compile(r"^random:[A-Za-z0-9_]+(@\d+)?$")
_PIXELS_RE = re.compile(r"^pixels:(\d+)$")


def load_embedder(
    uri_or_spec: str,
    device: str | torch.device = "cpu",
    *,
    features: str = "cls",
    image_size: int | None = None,
    resize_ratio: float = DEFAULT_RESIZE_RATIO,
    autocast_bf16: bool = True,
) -> Embedder:
    """Load any supported backbone (see module docstring) as an :class:`Embedder` on ``device``."""
    dev = resolve_device(device)
    kw = dict(features=features, image_size=image_size, resize_ratio=resize_ratio, autocast_bf16=autocast_bf16)
    m = _PIXELS_RE.match(uri_or_spec)
    if m:
        if features != "cls":
            raise ValueError("the pixel descriptor has no patch tokens: use features='cls'")
        return pixel_embedder(int(m.group(1)), dev, resize_ratio=1.0)
    if _RANDOM_RE.match(uri_or_spec):
        return random_vit_embedder(uri_or_spec, dev, **kw)
    if uri_or_spec.startswith(("random:", "pixels:")):
        raise ValueError(f"bad backbone spec {uri_or_spec!r}: use 'random:<preset>[@seed]' or 'pixels:<size>'")
    try:
        data = None if uri_or_spec.lower().endswith(".safetensors") else read_bytes(uri_or_spec)
    except (FileNotFoundError, IsADirectoryError):  # a run or checkpoint directory (or nothing)
        data = None
    if data is None:  # weights with no single file's sha256: the checksum is the tensors'
        loaded = load_model(uri_or_spec)
        checksum = state_dict_checksum(loaded.backbone.state_dict())
    else:
        checksum = hashlib.sha256(data).hexdigest()
        if is_torchscript(data):
            return torchscript_embedder(data, basename(uri_or_spec), checksum, dev, **kw)
        loaded = model_from_bytes(data, uri_or_spec)
    # Embed at the resolution the model was trained at unless told otherwise.
    kw["image_size"] = image_size or loaded.image_size
    return vit_embedder(loaded.backbone, loaded.model_id, checksum, dev, **kw)


def torchscript_embedder(
    data: bytes,
    name: str,
    checksum: str,
    device: torch.device,
    features: str = "cls",
    image_size: int | None = None,
    resize_ratio: float = DEFAULT_RESIZE_RATIO,
    autocast_bf16: bool = True,
) -> Embedder:
    """A TorchScript model mapping (n,3,H,W) to (n,d) features or to DINOv2's feature dict."""
    module = torch.jit.load(io.BytesIO(data), map_location=device).eval()
    size = image_size or 224
    pre = Preprocess(size, _resize_for(size, resize_ratio), IMAGENET_MEAN, IMAGENET_STD)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        out = module(batch)
        if isinstance(out, dict):
            if features == "cls+avgpool":
                return _vit_forward_dict(out)
            return out["x_norm_clstoken"]
        if features != "cls":
            raise ValueError(f"TorchScript model {name} returns one tensor: use features='cls'")
        return out

    with torch.inference_mode():
        probe = forward(torch.zeros(1, 3, size, size, device=device))
    return Embedder(forward, pre, int(probe.shape[1]), f"torchscript:{name}", checksum, device, autocast_bf16, module)


def _vit_forward_dict(out: dict) -> torch.Tensor:
    cls = l2_normalise(out["x_norm_clstoken"].float())
    pooled = l2_normalise(out["x_norm_patchtokens"].float().mean(dim=1))
    return torch.cat([cls, pooled], dim=1)


def embedder_from_config(cfg) -> Embedder:
    """The embedder an :class:`~tasks.embed.config.EmbedConfig` describes (its backbone checked against
    `cfg.arch` when one is named)."""
    embedder = load_embedder(
        cfg.backbone,
        cfg.device,
        features=cfg.features,
        image_size=cfg.image_size,
        resize_ratio=cfg.resize_ratio,
        autocast_bf16=cfg.autocast_bf16,
    )
    if cfg.arch is not None:
        check_arch(embedder, cfg.arch, cfg.backbone)
    return embedder


def check_arch(embedder: Embedder, arch: str, backbone: str) -> None:
    """Refuse an embedder whose backbone is not the ViT preset `arch`, naming every difference."""
    from models.presets import preset_mismatches
    from models.vit import VisionTransformer
    from tasks.release.load import CheckpointMismatch

    if not isinstance(embedder.module, VisionTransformer):
        raise CheckpointMismatch(f"embed.arch={arch} names a ViT architecture, but embed.backbone {backbone} is "
                                 f"a {embedder.model_id.split(':')[0]} model, whose architecture cannot be checked: "
                                 "set embed.arch to null for it")
    diffs = preset_mismatches(embedder.module, arch)
    if diffs:
        raise CheckpointMismatch(f"embed.backbone {backbone} is not the embed.arch={arch} architecture: "
                                 + "; ".join(diffs))


def embed_arrays(embedder: Embedder, tensors: list[torch.Tensor], batch_size: int = 64) -> np.ndarray:
    """Embed already-preprocessed tensors in batches -> float32 (n, dim)."""
    out = [embedder(torch.stack(tensors[i : i + batch_size])).numpy() for i in range(0, len(tensors), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32)

"""The models under evaluation and their frozen features, computed once per (model, split).

A model is a checkpoint URI (anything ``tasks.release.load`` reads), ``random:<preset>[@seed]``
or ``random:<run URI>[@seed]`` (a preset, or exactly the architecture a run trained, at random
initialisation: what training added) or ``pixels`` (raw pixels: the floor any learned feature
must clear). For a ViT one forward pass per image keeps
the CLS tokens of the last four blocks and the mean patch token of the last block (all after
the final norm, via ``get_intermediate_layers``): k-NN reads the last CLS, the linear probes all
four of DINOv2's input variants. Features are cached in memory and, when a cache URI is given,
on storage keyed by the model and data identity, so a rerun does not recompute them.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from storage import uri as su
from tasks.datasets.tensors import uint8_to_input

_RANDOM = re.compile(r"^random:(.+?)(?:@(\d+))?$")
_PIXELS = re.compile(r"^pixels(?::(\d+))?$")


@dataclass
class EvalModel:
    """One column of the comparison: a backbone, or None for raw pixels."""

    name: str
    backbone: torch.nn.Module | None
    kind: str  # "checkpoint" | "random" | "pixels"
    identity: str  # what the feature cache is keyed on
    pixels_size: int = 32
    params: int = 0
    cache: dict = field(default_factory=dict)


def resolve_model(spec: str, image_size: int, pixels_size: int = 32) -> EvalModel:
    """Build or load one model; checkpoint problems surface here, before any evaluation runs."""
    m = _PIXELS.match(spec)
    if m:
        size = int(m.group(1) or pixels_size)
        return EvalModel(f"pixels:{size}", None, "pixels", f"pixels:{size}", pixels_size=size)
    m = _RANDOM.match(spec)
    if m:
        from models.presets import PRESETS, build_vit

        target, seed = m.group(1), int(m.group(2) or 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if target in PRESETS:
                backbone = build_vit(target, img_size=image_size, drop_path_rate=0.0)
                name = f"random:{target}@{seed}"
            else:
                from tasks.release.load import find_checkpoint, read_run_config
                from tasks.train.build import build_backbone

                _, run_uri = find_checkpoint(target)
                cfg = read_run_config(run_uri)
                backbone = build_backbone(cfg.model_copy(update={"model": cfg.model.model_copy(
                    update={"drop_path_rate": 0.0})}))
                name = f"random:{su.basename(run_uri)}@{seed}"
        return EvalModel(name, backbone.eval(), "random", name, params=_count(backbone))
    if spec.startswith("pixels"):
        raise ValueError(f"bad baseline {spec!r}: use 'pixels[:size]'")
    from tasks.release.load import load_model

    loaded = load_model(spec)
    identity = f"{loaded.source}|{loaded.model_id}|{loaded.step}"
    return EvalModel(loaded.model_id, loaded.backbone.eval(), "checkpoint", identity, params=loaded.n_params())


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def vit_features(backbone: torch.nn.Module, inputs: torch.Tensor, device: torch.device,
                 batch_size: int = 128) -> dict[str, torch.Tensor]:
    """{"cls": [N, n, D] CLS of the last n<=4 blocks, "patch_mean": [N, D] of the last block}."""
    n_last = min(4, len(backbone.blocks))
    cls, patch = [], []
    use_bf16 = device.type == "cuda"
    for s in range(0, inputs.shape[0], batch_size):
        x = inputs[s : s + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            layers = backbone.get_intermediate_layers(x, n=n_last, return_class_token=True, norm=True)
        cls.append(torch.stack([c for _, c in layers], dim=1).float().cpu())
        patch.append(layers[-1][0].float().mean(dim=1).cpu())
    return {"cls": torch.cat(cls), "patch_mean": torch.cat(patch)}


def pixel_features(inputs: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """Raw pixels at size x size (area-downsampled model inputs), flattened and mean-centred."""
    x = F.interpolate(inputs.float(), size=(size, size), mode="area").flatten(1)
    return {"pixels": x - x.mean(dim=1, keepdim=True)}


def knn_features(features: dict[str, torch.Tensor]) -> torch.Tensor:
    """What k-NN and copy detection compare: the final CLS (or the pixels), L2-normalised."""
    f = features["pixels"] if "pixels" in features else features["cls"][:, -1]
    return F.normalize(f.float(), dim=1)


def model_inputs(images: np.ndarray, image_size: int) -> torch.Tensor:
    return uint8_to_input(images, image_size)


def features_for(model: EvalModel, key: str, images: np.ndarray, image_size: int, device: torch.device,
                 batch_size: int = 128, cache_uri: str | None = None) -> dict[str, torch.Tensor]:
    """Features of ``images`` (named ``key``, e.g. "fashion-mnist/train") under ``model``, cached."""
    if key in model.cache:
        return model.cache[key]
    digest = hashlib.sha256(f"{model.identity}|{key}|{image_size}|{images.shape}|".encode()
                            + hashlib.sha256(np.ascontiguousarray(images[:: max(1, len(images) // 64)])).digest())
    file_uri = su.join(cache_uri, f"{digest.hexdigest()[:32]}.pt") if cache_uri else None
    if file_uri and su.exists(file_uri):
        feats = torch.load(io.BytesIO(su.read_bytes(file_uri)), weights_only=True)
    else:
        inputs = model_inputs(images, image_size)
        if model.backbone is None:
            feats = pixel_features(inputs, model.pixels_size)
        else:
            model.backbone.to(device)
            feats = vit_features(model.backbone, inputs, device, batch_size)
        if file_uri:
            buf = io.BytesIO()
            torch.save(feats, buf)
            su.write_bytes_atomic(file_uri, buf.getvalue())
    model.cache[key] = feats
    return feats


def feature_variants_of(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The linear-probe inputs of one feature set (one variant for raw pixels)."""
    from tasks.evaluate.linear import feature_variants

    if "pixels" in features:
        return {"pixels": features["pixels"].float()}
    return feature_variants(features["cls"], features["patch_mean"])

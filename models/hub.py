"""Constructors for the released DINOv2 backbones, optionally loading a local weights file.

Each builds the architecture of the matching release (patch 14, img_size 518 so pos_embed holds
a 37x37 grid, LayerScale present, SwiGLU for ViT-g, 4 registers for `_reg` models, and the
positional-embedding resize rule that release was trained with). `weights` is None (random init)
or a local path to e.g. `dinov2_vits14_pretrain.pth`; nothing is downloaded.

`from_safetensors` builds a model this project trained or distilled from its `lvd export` file.
"""

from __future__ import annotations

import os
from typing import Any

from models.heads import DINOHead
from models.official_weights import (
    OfficialWeightsError,
    load_official_weights,
    official_to_project,
    vit_from_official_state_dict,
)
from models.presets import build_vit
from models.timm_weights import is_timm_layout, timm_to_project
from models.vit import VisionTransformer

Weights = str | os.PathLike | None


def _make(arch: str, weights: Weights, registers: bool, **overrides: Any) -> VisionTransformer:
    kwargs: dict[str, Any] = dict(
        img_size=518,
        patch_size=14,
        init_values=1.0,
        drop_path_rate=0.0,
        num_register_tokens=4 if registers else 0,
        # The reg4 releases resize positional embeddings by target size with antialiasing; the
        # first releases by a scale factor with the legacy +0.1 offset and no antialiasing.
        interpolate_antialias=registers,
        interpolate_offset=0.0 if registers else 0.1,
    )
    kwargs.update(overrides)
    model = build_vit(arch, **kwargs)
    if weights is not None:
        load_official_weights(model, weights)
    return model


def dinov2_vits14(weights: Weights = None, **overrides: Any) -> VisionTransformer:
    return _make("vit_small", weights, registers=False, **overrides)


def dinov2_vitb14(weights: Weights = None, **overrides: Any) -> VisionTransformer:
    return _make("vit_base", weights, registers=False, **overrides)


def dinov2_vitl14(weights: Weights = None, **overrides: Any) -> VisionTransformer:
    return _make("vit_large", weights, registers=False, **overrides)


def dinov2_vitg14(weights: Weights = None, **overrides: Any) -> VisionTransformer:
    return _make("vit_giant2", weights, registers=False, **overrides)


def dinov2_vits14_reg(weights: Weights = None, **overrides: Any) -> VisionTransformer:
    return _make("vit_small", weights, registers=True, **overrides)


def dinov2_vitb14_reg(weights: Weights = None, **overrides: Any) -> VisionTransformer:
    return _make("vit_base", weights, registers=True, **overrides)


def dinov2_vitl14_reg(weights: Weights = None, **overrides: Any) -> VisionTransformer:
    return _make("vit_large", weights, registers=True, **overrides)


def dinov2_vitg14_reg(weights: Weights = None, **overrides: Any) -> VisionTransformer:
    return _make("vit_giant2", weights, registers=True, **overrides)


# ---- this project's exported models -------------------------------------------------------------

SAFETENSORS_FORMAT = "lvd-dinov2"


def dino_head_from_state_dict(state_dict: dict[str, Any]) -> DINOHead:
    """A `DINOHead` shaped and loaded from its state dict (widths, depth and prototypes read off
    the tensors). Accepts the official `last_layer.weight_g`/`weight_v` names of the old
    `weight_norm` hook as well as the parametrization names this project uses."""
    import torch

    sd = dict(state_dict)
    renames = {
        "last_layer.weight_g": "last_layer.parametrizations.weight.original0",
        "last_layer.weight_v": "last_layer.parametrizations.weight.original1",
        # the official one-layer head is a bare Linear, not a Sequential of one
        "mlp.weight": "mlp.0.weight",
        "mlp.bias": "mlp.0.bias",
    }
    sd = {renames.get(k, k): v for k, v in sd.items()}
    linear = sorted(int(k.split(".")[1]) for k in sd if k.startswith("mlp.") and k.endswith(".weight"))
    prototypes = sd.get("last_layer.parametrizations.weight.original1")
    if not linear or prototypes is None:
        raise ValueError(f"not a DINO head state dict: keys {sorted(sd)[:6]}")
    first, last = sd[f"mlp.{linear[0]}.weight"], sd[f"mlp.{linear[-1]}.weight"]
    head = DINOHead(
        in_dim=int(first.shape[1]),
        out_dim=int(prototypes.shape[0]),
        hidden_dim=int(first.shape[0]) if len(linear) > 1 else 2048,
        bottleneck_dim=int(last.shape[0]),
        nlayers=len(linear),
        mlp_bias=f"mlp.{linear[0]}.bias" in sd,
    )
    head.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()}, strict=True)
    return head


def from_safetensors(path: Weights, heads: bool = False):
    """A backbone exported by `lvd export` (a `.safetensors` file), as a plain `VisionTransformer`.

    The file carries the constructor arguments in its metadata, so nothing else is needed. With
    `heads=True` the result is `(backbone, {"dino_head": ..., "ibot_head": ...})`: the SSL heads
    are kept in the export so self-supervised training can continue from it.
    """
    import json

    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != SAFETENSORS_FORMAT:
            raise ValueError(f"{path}: not an lvd export (metadata format {meta.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    kwargs = json.loads(meta["vit_kwargs"])
    model = VisionTransformer(**kwargs)
    backbone = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    load_official_weights(model, backbone)
    model.eval()
    if not heads:
        return model
    found = {}
    for name in ("dino_head", "ibot_head"):
        part = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")}
        if part:
            found[name] = dino_head_from_state_dict(part).eval()
    return model, found


_OFFICIAL_ARCH_BY_WIDTH = {384: "vits14", 768: "vitb14", 1024: "vitl14", 1536: "vitg14"}


def backbone_from_state_dict(payload: dict) -> tuple[VisionTransformer | None, str]:
    """DINOv2- or timm-named backbone state dict -> (model with those weights, its name).

    The architecture is read off the tensors: width from ``cls_token``, registers from
    ``register_tokens``; this module builds the matching DINOv2 release (e.g.
    ``dinov2_vitl14_reg``). Other widths (the paper's ViT-H/16 curation embedder, an official-format
    training of another size) and timm's layout are built from the shapes alone. (None, "") when the dict is no ViT backbone state dict.
    A release-wide dict must hold every block of that release: a missing block is an error naming
    it, never a shallower model.
    """
    try:
        state = official_to_project(payload)
    except OfficialWeightsError:
        return None, ""
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        return None, ""
    if is_timm_layout(state):
        # timm resizes positional embeddings with antialiasing and no offset
        model, name = vit_from_official_state_dict(timm_to_project(state), interpolate_antialias=True,
                                                   interpolate_offset=0.0)
        return model, "timm:" + name.removeprefix("dinov2_")
    width = int(state["cls_token"].shape[-1])
    arch = _OFFICIAL_ARCH_BY_WIDTH.get(width)
    if arch is None:  # no release this wide (the paper's ViT-H/16, a custom training): from the shapes
        return vit_from_official_state_dict(state)
    name = f"dinov2_{arch}" + ("_reg" if "register_tokens" in state else "")
    model = globals()[name](weights=None)
    load_official_weights(model, state)
    return model, name

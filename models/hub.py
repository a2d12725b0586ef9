"""Constructors for the released DINOv2 backbones, optionally loading a local weights file.

Each builds the architecture of the matching release (patch 14, img_size 518 so pos_embed holds
a 37x37 grid, LayerScale present, SwiGLU for ViT-g, 4 registers for `_reg` models, and the
positional-embedding resize rule that release was trained with). `weights` is None (random init)
or a local path to e.g. `dinov2_vits14_pretrain.pth`; nothing is downloaded.
"""

from __future__ import annotations

import os
from typing import Any

from models.official_weights import load_official_weights
from models.presets import build_vit
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

"""Named ViT sizes and `build_vit(name, **overrides)`.

The four DINOv2 sizes use the official widths and depths at patch 14. Their stochastic-depth
rates follow the official training configs where one exists (0.3 for ViT-L in the default
config, 0.4 for ViT-g); ViT-S/B were only ever distilled there, so they get the lighter rates
usual for small ViTs trained from scratch (0.1 / 0.2). `vit_huge` is the ViT-H/16 the paper
curates with (an embedder here; its rate is ViT-L's). `vit_tiny` and `vit_pico` are CPU sizes
for smoke runs and tests.
"""

from __future__ import annotations

from typing import Any

from models.vit import VisionTransformer

PRESETS: dict[str, dict[str, Any]] = {
    "vit_pico": dict(embed_dim=64, depth=4, num_heads=2, drop_path_rate=0.0),
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.1),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, drop_path_rate=0.1),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.2),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.3),
    # The paper's curation embedder (ViT-H/16): 1280 wide, 16 heads of 80, patch 16, MLP 5120.
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=16, drop_path_rate=0.3),
    # 1536 wide, 24 heads of 64, SwiGLU with hidden (int(6144 * 2/3) + 7) // 8 * 8 = 4096.
    "vit_giant2": dict(embed_dim=1536, depth=40, num_heads=24, ffn_layer="swiglufused", drop_path_rate=0.4),
}

ALIASES = {
    "vits14": "vit_small",
    "vitb14": "vit_base",
    "vitl14": "vit_large",
    "vitg14": "vit_giant2",
    "vith16": "vit_huge",
    "vit_giant": "vit_giant2",
}

COMMON: dict[str, Any] = dict(
    patch_size=14,
    img_size=224,
    mlp_ratio=4.0,
    init_values=1e-5,
    drop_path_uniform=True,
)


def vit_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """Constructor arguments of preset `name` with `overrides` applied."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        raise KeyError(f"unknown ViT preset {name!r}; known: {sorted(PRESETS) + sorted(ALIASES)}")
    return {**COMMON, **PRESETS[key], **overrides}


def build_vit(name: str, **overrides: Any) -> VisionTransformer:
    """Build preset `name` ("vit_small", "vitg14", ...), overriding any constructor argument."""
    return VisionTransformer(**vit_kwargs(name, **overrides))


def _last_linear(module: Any) -> Any:
    from torch import nn

    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


def _shape(model: Any) -> dict[str, Any]:
    mlp = model.blocks[0].mlp if len(model.blocks) else None
    return {
        "width": int(model.embed_dim),
        "depth": len(model.blocks),
        "heads": int(model.num_heads),
        "patch": int(model.patch_size[0] if isinstance(model.patch_size, (tuple, list)) else model.patch_size),
        # the MLP's kind and hidden width: the input width of its last projection
        "mlp": None if mlp is None else f"{type(mlp).__name__} {_last_linear(mlp).in_features}",
    }


def preset_mismatches(model: VisionTransformer, name: str) -> list[str]:
    """How a built backbone differs from preset `name` (width, depth, heads, patch size, MLP kind and
    size); empty when it is that architecture. Registers and resolution are not compared."""
    import torch

    kwargs = vit_kwargs(name)
    with torch.device("meta"):  # one block of the reference is enough: every block has the same shape
        reference = _shape(VisionTransformer(**{**kwargs, "depth": 1}))
    reference["depth"] = kwargs["depth"]
    got = _shape(model)
    return [f"{key} {got[key]} (preset {name}: {reference[key]})" for key in reference if got[key] != reference[key]]

"""Load official DINOv2 backbone weights onto `VisionTransformer`, and export ours in their format.

The released files (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`) are flat state dicts with keys
such as `cls_token`, `pos_embed` [1, 1 + 37*37, D], `register_tokens`, `mask_token` [1, D],
`patch_embed.proj.weight`, `blocks.N.norm1.weight`, `blocks.N.attn.qkv.weight`,
`blocks.N.ls1.gamma`, `blocks.N.mlp.fc1.weight` (or `mlp.w12`/`mlp.w3` for SwiGLU) and
`norm.weight`. This project's module names are the same, so the mapping is the identity except
for the containers training checkpoints add:

- `{"teacher": {...}}` / `{"model": {...}}` / `{"state_dict": {...}}` wrappers;
- a `backbone.` prefix (student/teacher ModuleDicts, whose heads are dropped) or `module.` (DDP);
- FSDP block chunks, `blocks.<chunk>.<block>.` instead of `blocks.<block>.`.

`vit_from_official_state_dict` also reads the architecture off the tensor shapes, so a released
file can be loaded without knowing which model it holds.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from models.mlp import swiglu_hidden_features
from models.presets import PRESETS
from models.vit import VisionTransformer
from lvd.errors import LvdError

_log = logging.getLogger(__name__)
_CONTAINER_KEYS = ("teacher", "model", "state_dict")
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


class OfficialWeightsError(LvdError, ValueError):
    """A state dict does not fit the model: lists missing and unexpected keys and shape mismatches."""


def _strip_prefix(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if not any(k.startswith(prefix) for k in sd):
        return sd
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def official_to_project(state_dict: Mapping) -> dict[str, Tensor]:
    """Official backbone state dict (released file or training checkpoint) -> this project's keys."""
    sd: Mapping = state_dict
    while not any(isinstance(v, Tensor) for v in sd.values()):
        inner = next((sd[k] for k in _CONTAINER_KEYS if isinstance(sd.get(k), Mapping)), None)
        if inner is None:
            raise OfficialWeightsError(f"no tensors found in checkpoint with keys {sorted(sd)[:10]}")
        sd = inner
    out = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    out = _strip_prefix(out, "module.")
    out = _strip_prefix(out, "backbone.")
    renamed = {}
    for key, value in out.items():
        m = _CHUNKED.match(key)
        renamed[f"blocks.{m.group(2)}.{m.group(3)}" if m else key] = value
    return renamed


def project_to_official(model_or_state_dict: nn.Module | Mapping, block_chunks: int = 0) -> dict[str, Tensor]:
    """Exporter: this project's backbone -> a state dict in official naming (detached CPU copies).

    With `block_chunks > 0` the keys take the chunked form of official training checkpoints
    (`blocks.<chunk>.<block>.`, chunk = block // (depth // block_chunks)).
    """
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    block_ids = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    chunk_size = max(len(block_ids) // block_chunks, 1) if block_chunks > 0 else 0
    out = {}
    for key, value in sd.items():
        if chunk_size and key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            key = f"blocks.{int(idx) // chunk_size}.{idx}.{rest}"
        out[key] = value.detach().clone() if value.is_meta else value.detach().to("cpu", copy=True)
    return out


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Raise `OfficialWeightsError` naming every missing key, unexpected key and shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = ["state dict does not match the model"]
    if missing:
        lines.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if mismatched:
        lines.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
    if any(k.startswith("pos_embed") for k in mismatched):
        lines.append("hint: pos_embed size is set by img_size (518 for the released weights)")
    raise OfficialWeightsError("\n".join(lines))


def load_official_weights(model: nn.Module, source: str | os.PathLike | Mapping) -> nn.Module:
    """Load an official DINOv2 backbone checkpoint (path or already-loaded dict) into `model`, strictly."""
    if isinstance(source, Mapping):
        raw = source
    else:
        raw = torch.load(os.fspath(source), map_location="cpu", weights_only=True)
    state_dict = official_to_project(raw)
    check_state_dict(model, state_dict)
    model.load_state_dict(state_dict, strict=True)
    return model


_SHORT = {"vit_small": "s", "vit_base": "b", "vit_large": "l", "vit_huge": "h", "vit_giant2": "g"}


def infer_vit_kwargs(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Any], str | None]:
    """`VisionTransformer` arguments that fit an (official-named) backbone state dict, and the
    preset it matches (None if none does).

    Widths, depth, patch size, native grid, registers, FFN type and LayerScale come from the
    shapes. The head count is not stored in weights: it is the matching preset's, else that of a
    preset of the same width (a shallow ViT-H keeps 16 heads of 80), else embed_dim / 64 (every
    DINOv2 release uses 64-wide heads). The positional-embedding resize rule
    follows the releases: (antialias, offset 0) with registers, (no antialias, +0.1) without.
    """
    sd = official_to_project(state_dict)
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in sd:
            raise OfficialWeightsError(f"not a DINOv2 backbone state dict: no {key!r}")
    dim, in_chans, patch, _ = sd["patch_embed.proj.weight"].shape
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    depth = max(blocks) + 1 if blocks else 0
    if len(blocks) != depth:
        gaps = sorted(set(range(depth)) - blocks)
        raise OfficialWeightsError(f"the state dict holds blocks up to {depth - 1} but not {gaps[:8]}: "
                                   "a backbone with missing blocks is refused, not loaded shallower")
    grid = math.isqrt(sd["pos_embed"].shape[1] - 1)
    if grid * grid != sd["pos_embed"].shape[1] - 1:
        raise OfficialWeightsError(f"pos_embed of shape {tuple(sd['pos_embed'].shape)} is not a square grid")
    swiglu = "blocks.0.mlp.w12.weight" in sd
    if swiglu:
        hidden = sd["blocks.0.mlp.w12.weight"].shape[0] // 2
        # The width before the 2/3 rounding: 4x for every release, else whatever rounds to `hidden`.
        mlp_ratio = 4.0 if swiglu_hidden_features(4 * dim) == hidden else hidden * 1.5 / dim
    else:
        hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
        mlp_ratio = hidden / dim if int(dim * (hidden / dim)) == hidden else (hidden + 0.5) / dim
    registers = int(sd["register_tokens"].shape[1]) if "register_tokens" in sd else 0
    kwargs: dict[str, Any] = dict(
        img_size=grid * patch,
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=dim,
        depth=depth,
        ffn_layer="swiglufused" if swiglu else "mlp",
        mlp_ratio=mlp_ratio,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        proj_bias="blocks.0.attn.proj.bias" in sd,
        ffn_bias=("blocks.0.mlp.w12.bias" if swiglu else "blocks.0.mlp.fc1.bias") in sd,
        init_values=1.0 if "blocks.0.ls1.gamma" in sd else None,
        num_register_tokens=registers,
        interpolate_antialias=registers > 0,
        interpolate_offset=0.0 if registers else 0.1,
    )
    preset = next((n for n, p in PRESETS.items() if (p["embed_dim"], p["depth"]) == (dim, depth)), None)
    same_width = next((p["num_heads"] for p in PRESETS.values() if p["embed_dim"] == dim), None)
    kwargs["num_heads"] = PRESETS[preset]["num_heads"] if preset else same_width or max(dim // 64, 1)
    if preset is None:  # the head count is in no tensor: say what was assumed, never guess silently
        _log.warning("a %d-wide, %d-block backbone matches no preset: assuming %d attention heads (the weights do "
                     "not record it; pass num_heads to vit_from_official_state_dict if it differs)",
                     dim, depth, kwargs["num_heads"])
    return kwargs, preset


def vit_from_official_state_dict(
    state_dict: Mapping, name_hint: str = "", **overrides: Any
) -> tuple[VisionTransformer, str]:
    """Build the backbone a DINOv2 state dict describes, load it, and name it.

    `overrides` replace inferred constructor arguments (e.g. `num_heads` for a custom width).
    The name is e.g. "dinov2_vits14_reg4" for a release-shaped model (with `name_hint`, e.g. the
    file name, appended after a colon).
    """
    kwargs, preset = infer_vit_kwargs(state_dict)
    kwargs.update(overrides)
    model = VisionTransformer(**kwargs)
    load_official_weights(model, state_dict)
    size = _SHORT.get(preset or "", f"_{kwargs['embed_dim']}x{kwargs['depth']}_")
    name = f"dinov2_vit{size}{kwargs['patch_size']}"
    if kwargs["num_register_tokens"]:
        name += f"_reg{kwargs['num_register_tokens']}"
    return model.eval(), f"{name}:{name_hint}" if name_hint else name

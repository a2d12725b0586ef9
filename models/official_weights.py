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
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

_CONTAINER_KEYS = ("teacher", "model", "state_dict")
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


class OfficialWeightsError(ValueError):
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
        out[key] = value.detach().to("cpu", copy=True)
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

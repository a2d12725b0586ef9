"""timm ViT state dicts -> this project's backbone keys (which are DINOv2's).

Curation embedders such as the paper's ViT-H/16 are often published in timm's layout. timm names
the patch embedding, blocks, attention, LayerScale (`ls1.gamma`), plain MLPs (`mlp.fc1`/`fc2`)
and the final `norm` as DINOv2 does; it differs in:

- registers: `reg_token` [1, R, D] instead of `register_tokens`;
- positional embeddings, three layouts, each folded exactly into this model's [1, 1 + N, D]:
  with a class position (default, [1, 1 + N, D]), without one (`no_embed_class`, [1, N, D]: the
  class token gets a zero position), or with the registers' positions too ([1, 1 + R + N, D]:
  added into the register tokens, which this model does not position);
- SwiGLU MLPs: packed `mlp.fc1` [2H, D] (SiLU on the first half, as DINOv2's `mlp.w12`) or split
  `mlp.fc1_g` (gate) / `mlp.fc1_x`, and `mlp.fc2` for `mlp.w3`;
- no `mask_token` (only iBOT training reads it: zeros) and a classifier `head.*` (dropped).

Models whose CLS feature is not `norm(x)[:, 0]` (global-pool `fc_norm`, CLIP's `norm_pre`,
q/k norms) are refused by name rather than loaded into the wrong function.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import Tensor

from models.official_weights import OfficialWeightsError

_BLOCK_MLP = re.compile(r"^blocks\.(\d+)\.mlp\.(fc1|fc1_g|fc1_x|fc2)\.(weight|bias)$")
_UNSUPPORTED = ("fc_norm.", "norm_pre.", "attn_pool.", ".attn.q_norm.", ".attn.k_norm.", ".mlp.norm.")


def is_timm_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a backbone state dict (containers stripped) is in timm's layout rather than DINOv2's."""
    if "reg_token" in state_dict or "mask_token" not in state_dict:
        return True
    return any(k.startswith("head.") or ".mlp.fc1_g." in k for k in state_dict) or _has_packed_glu(state_dict)


def _has_packed_glu(sd: Mapping[str, Tensor]) -> bool:
    fc1, fc2 = sd.get("blocks.0.mlp.fc1.weight"), sd.get("blocks.0.mlp.fc2.weight")
    return fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _positions(pos: Tensor, registers: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(pos_embed [1, 1 + N, D], register tokens) from any of timm's three layouts."""
    length, r = pos.shape[1], 0 if registers is None else registers.shape[1]
    if _is_square(length - 1):
        return pos, registers
    if _is_square(length):  # no class position: timm adds nothing to the class token
        return torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1), registers
    if r and _is_square(length - 1 - r):  # registers positioned: fold their positions in
        return torch.cat([pos[:, :1], pos[:, 1 + r:]], dim=1), registers + pos[:, 1:1 + r]
    raise OfficialWeightsError(f"pos_embed of shape {tuple(pos.shape)} fits no square patch grid "
                               f"(with {r} registers)")


def timm_to_project(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm ViT backbone keys -> this project's; DINOv2-named entries pass through unchanged."""
    bad = sorted(k for k in state_dict if any(k.startswith(u) or u in k for u in _UNSUPPORTED))
    if bad:
        raise OfficialWeightsError(
            "timm model whose features are not norm(x)[:, 0] (global-pool fc_norm, pre-norm, q/k norm "
            f"or MLP norm): unsupported keys {', '.join(bad[:6])}")
    sd = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    packed = _has_packed_glu(sd)
    glu = packed or "blocks.0.mlp.fc1_g.weight" in sd
    out: dict[str, Tensor] = {}
    split: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key in ("reg_token", "pos_embed"):
            continue
        m = _BLOCK_MLP.match(key)
        if m is None:
            out[key] = value
            continue
        block, name, kind = m.groups()
        prefix = f"blocks.{block}.mlp"
        if name in ("fc1_g", "fc1_x"):
            split.setdefault((prefix, kind), {})[name] = value
        elif name == "fc1" and packed:
            out[f"{prefix}.w12.{kind}"] = value
        elif name == "fc2" and glu:
            out[f"{prefix}.w3.{kind}"] = value
        else:
            out[key] = value
    for (prefix, kind), halves in split.items():
        out[f"{prefix}.w12.{kind}"] = torch.cat([halves["fc1_g"], halves["fc1_x"]], dim=0)
    if "pos_embed" in sd:
        pos, registers = _positions(sd["pos_embed"], sd.get("reg_token", sd.get("register_tokens")))
        out["pos_embed"] = pos
        if registers is not None:
            out["register_tokens"] = registers
    if "mask_token" not in out and "cls_token" in out:
        out["mask_token"] = out["cls_token"].new_zeros(1, out["cls_token"].shape[-1])
    return out

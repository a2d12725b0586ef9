"""Pooling of ViT tokens into one copy-detection feature.

GeM (generalised mean) pooling, as SSCD pools its CNN's feature map, with ``p = 3``: the cube root
of the mean cube, per channel. For non-negative inputs this is SSCD's ``mean(clamp(x)^p)^(1/p)``;
ViT tokens (after the final LayerNorm) are signed, and with an odd ``p`` the power mean stays
defined for them (a signed cube and a real cube root), so no half of a channel is clamped away.
It sits between the mean (``p = 1``) and the max (``p -> inf``): a region that stands out in a
channel dominates, which is what a copy shares with its original when most of it is cropped
away or covered.

The copy feature of a backbone is its CLS token and the GeM of its patch tokens, each
L2-normalised, concatenated (``2 * embed_dim``) and L2-normalised again, so both halves weigh the
same whatever their scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GEM_P = 3.0


def gem(tokens: torch.Tensor, p: float = GEM_P, dim: int = 1) -> torch.Tensor:
    """Signed generalised mean of ``tokens`` over ``dim``: ``sign(m) |m|^(1/p)``, ``m = mean(sign(x) |x|^p)``."""
    if p <= 0:
        raise ValueError(f"GeM needs p > 0, got {p}")
    x = tokens.float()
    m = (x.sign() * x.abs().pow(p)).mean(dim=dim)
    return m.sign() * m.abs().clamp_min(1e-12).pow(1.0 / p)


def cls_gem_feature(out: dict, p: float = GEM_P) -> torch.Tensor:
    """``(n, 2 * embed_dim)`` L2-normalised [CLS, GeM(patch tokens)] from a ``forward_features`` dict."""
    cls = F.normalize(out["x_norm_clstoken"].float(), dim=1)
    pooled = F.normalize(gem(out["x_norm_patchtokens"], p, dim=1), dim=1)
    return F.normalize(torch.cat([cls, pooled], dim=1), dim=1)

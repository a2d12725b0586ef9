"""Feed-forward layers of a transformer block: the classic GELU MLP and SwiGLU."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, as in ViT-S/B/L."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def swiglu_hidden_features(hidden_features: int) -> int:
    """Hidden width that keeps SwiGLU's parameter count close to a 4x MLP.

    SwiGLU has three weight matrices instead of two, so the hidden width is scaled by 2/3 and
    rounded up to a multiple of 8 (the rule of DINOv2's "swiglufused" layer). For ViT-g
    (dim 1536, ratio 4): int(6144 * 2/3) = 4096, already a multiple of 8.
    """
    return (int(hidden_features * 2 / 3) + 7) // 8 * 8


class SwiGLU(nn.Module):
    """SiLU(x W1) * (x W2), then W3. W1 and W2 are stored stacked as `w12` (one matmul)."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True) -> None:
        super().__init__()
        self.hidden_features = hidden_features
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


def build_ffn(kind: str, dim: int, mlp_ratio: float, bias: bool = True) -> nn.Module:
    """`kind` is "mlp", or "swiglu"/"swiglufused" (the same layer; both names occur in DINOv2 configs)."""
    hidden = int(dim * mlp_ratio)
    if kind == "mlp":
        return Mlp(dim, hidden, bias=bias)
    if kind in ("swiglu", "swiglufused"):
        return SwiGLU(dim, swiglu_hidden_features(hidden), bias=bias)
    raise ValueError(f"unknown ffn_layer {kind!r}; expected 'mlp', 'swiglu' or 'swiglufused'")

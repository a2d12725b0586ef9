"""DINO projection head, also used (as a separate instance) for iBOT patch tokens.

MLP (Linear-GELU-Linear-GELU-Linear) down to a small bottleneck, L2 normalisation, then a
bias-free linear layer over the prototypes whose rows are normalised by weight normalisation.
Normalising both the bottleneck and the prototypes bounds the logits (cosine similarities),
which keeps the temperature-scaled softmax stable early in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """Projection head: ``(*, in_dim) -> (*, out_dim)`` prototype logits.

    ``nlayers`` counts the Linear layers of the MLP (1 means a single Linear to the bottleneck).
    The prototype layer uses ``torch.nn.utils.parametrizations.weight_norm`` (the old
    ``nn.utils.weight_norm`` hook breaks ``copy.deepcopy``, which builds the teacher). Its
    magnitude ``g`` starts at 1 and is trained, as in the official head; ``train_norm=False``
    freezes it, so each prototype stays a unit vector and the logits are cosine similarities.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        mlp_bias: bool = True,
        train_norm: bool = True,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        if nlayers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim, bias=mlp_bias)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim, bias=mlp_bias), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim, bias=mlp_bias), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=mlp_bias))
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_init_linear)
        # The prototype layer keeps PyTorch's default Linear init; only its direction matters.
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(train_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        # A larger eps in fp16/bf16, where 1e-12 underflows to zero.
        eps = 1e-12 if x.dtype == torch.float32 or x.dtype == torch.float64 else 1e-6
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)

"""KoLeo regulariser (Kozachenko-Leonenko entropy estimate): spread features within a batch.

Loss = -mean_i log(||x_i - x_nn(i)||) on L2-normalised vectors, nearest neighbour taken within
the batch of this process. Applied by the caller to the backbone CLS of each global crop
separately (two views of one image are not neighbours), with weight 0.1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    """-mean log nearest-neighbour distance; float32 with autocast off; eps 1e-8 as official."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"KoLeo needs a (B, D) batch with B >= 2, got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.normalize(x.float(), p=2, dim=-1, eps=self.eps)
            with torch.no_grad():
                sims = x @ x.t()
                sims.fill_diagonal_(float("-inf"))
                nearest = sims.argmax(dim=1)
            dist = F.pairwise_distance(x, x[nearest], p=2, eps=self.eps)
            return -torch.log(dist + self.eps).mean()

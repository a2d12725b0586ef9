"""The copy detector: a ViT, its copy feature (CLS + GeM patch tokens), a projection, L2 norm;
and SSCD's loss (InfoNCE between two edited views of each image, plus a KoLeo entropy term).

SSCD (Pizzi et al., 2022) trains a ResNet with GeM pooling, a linear projection and L2
normalisation on pairs of strongly augmented views: each view must pick out its partner among all
2B - 1 other views of the batch (InfoNCE, temperature 0.05), and a differential-entropy term (the
Kozachenko-Leonenko estimate, KoLeo in DINOv2) pushes every descriptor away from its nearest
neighbour so unrelated images do not crowd together. Here the backbone is an lvd ViT and the
pooled feature is :func:`models.pooling.cls_gem_feature`, the one any lvd model gives as a copy
model, so a trained detector and an untrained backbone are compared on the same feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.losses.koleo import KoLeoLoss
from models.pooling import cls_gem_feature


class CopyDetector(nn.Module):
    """``student`` holds ``backbone`` and ``copy_head``; SSCD has no teacher, so ``teacher`` is the same
    network (the engine evaluates and exports ``teacher``) and :meth:`update_teacher` does nothing."""

    def __init__(self, backbone: nn.Module, descriptor_dim: int) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"backbone": backbone,
                                      "copy_head": nn.Linear(2 * int(backbone.embed_dim), descriptor_dim)})

    @property
    def teacher(self) -> nn.ModuleDict:
        return self.student

    def update_teacher(self, momentum: float) -> None:
        pass

    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """``(n, descriptor_dim)`` L2-normalised descriptors of a normalised image batch."""
        feat = cls_gem_feature(self.student["backbone"].forward_features(images))
        return F.normalize(self.student["copy_head"](feat).float(), dim=1)


def info_nce(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """InfoNCE over ``2B`` L2-normalised descriptors, rows ``i`` and ``i + B`` being the two views of one image.

    Each row's positive is its partner; the other ``2B - 2`` rows are negatives. Returns the mean
    cross-entropy and, detached, the mean positive cosine, the mean hardest-negative cosine and the
    share of rows whose nearest row is their partner.
    """
    n = z.shape[0]
    if n % 2 or n < 4:
        raise ValueError(f"InfoNCE needs two views of at least two images (an even batch >= 4), got {n} rows")
    b = n // 2
    sim = z @ z.t()
    logits = (sim / temperature).masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(b, n), torch.arange(0, b)]).to(z.device)
    loss = F.cross_entropy(logits, partner)
    with torch.no_grad():
        pos = sim[torch.arange(n, device=z.device), partner]
        neg = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), -2.0)
        neg[torch.arange(n, device=z.device), partner] = -2.0
        stats = {"positive_cosine": pos.mean(), "hardest_negative_cosine": neg.amax(dim=1).mean(),
                 "pair_accuracy": (logits.argmax(dim=1) == partner).float().mean()}
    return loss, stats


def sscd_losses(model: CopyDetector, batch: dict, temperature: float, entropy_weight: float,
                koleo: KoLeoLoss | None = None) -> dict[str, torch.Tensor]:
    """The loss terms of one batch (``collated_global_crops``: view 1 of every image, then view 2)."""
    z = model.descriptors(batch["collated_global_crops"])
    contrastive, stats = info_nce(z, temperature)
    koleo = koleo or KoLeoLoss()
    b = z.shape[0] // 2
    entropy = 0.5 * (koleo(z[:b]) + koleo(z[b:]))  # within one view: the two views of an image are not neighbours
    total = contrastive + entropy_weight * entropy
    return {"total": total, "infonce_loss": contrastive.detach(), "koleo_loss": entropy.detach(), **stats}

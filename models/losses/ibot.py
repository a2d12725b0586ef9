"""iBOT loss: the student predicts, for each masked patch, the teacher's target at that patch.

Each image's loss is the mean cross-entropy over its own masked patches (weights 1/n_masked of
that image, from the collate's ``masks_weight``); these are averaged over all global-crop
images, unmasked ones included, as the official code does. So with half of the images masked
the loss starts at about half of ln K.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IBOTPatchLoss(nn.Module):
    """Weighted masked-patch cross-entropy, summed and divided by the number of images."""

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_probs: torch.Tensor,
        masks_weight: torch.Tensor,
        n_images: int,
        n_masked_patches: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """student_logits: (M', K) head outputs of the masked patches, possibly padded to a
        static size M' >= M (the collate's ``upperbound``); teacher_probs: (M, K) or padded;
        masks_weight: (M,) per-patch weight 1/(masked patches of its image); n_images: number of
        global-crop images (2B), the denominator; n_masked_patches: M, the number of real rows
        (defaults to ``len(masks_weight)``).
        """
        n = len(masks_weight) if n_masked_patches is None else int(n_masked_patches)
        log_p = F.log_softmax(student_logits[:n].float() / self.student_temp, dim=-1)
        per_patch = -(teacher_probs[:n].float() * log_p).sum(dim=-1)
        return (per_patch * masks_weight[:n].float()).sum() / n_images

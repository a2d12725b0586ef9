"""DINO loss: cross-entropy of each student crop's CLS prediction against the teacher's targets.

Pairs are (student crop, teacher global crop of a *different* view): global student crop i
against every teacher global crop j != i, and every local crop against every teacher global
crop. Each pair contributes the batch mean of its cross-entropy; the loss is the average over
pairs. With 2 global and 8 local crops that is (2 + 16) pairs, exactly how the official
training step combines its local and global terms (both divided by 18).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOLoss(nn.Module):
    """Average over (student crop, other teacher global crop) pairs of the batch-mean CE."""

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(
        self,
        student_global_logits: torch.Tensor,
        teacher_probs: torch.Tensor,
        student_local_logits: torch.Tensor | None = None,
        n_global_crops: int = 2,
    ) -> torch.Tensor:
        """Crop-major inputs: rows [c*B:(c+1)*B] belong to crop c.

        student_global_logits: (n_global*B, K) student head outputs for the global crops.
        teacher_probs: (n_global*B, K) centred teacher targets for the same global crops.
        student_local_logits: (n_local*B, K) or None.
        """
        if teacher_probs.shape != student_global_logits.shape:
            raise ValueError(f"{tuple(teacher_probs.shape)} teacher vs {tuple(student_global_logits.shape)} student")
        n_rows, n_protos = teacher_probs.shape
        if n_rows % n_global_crops:
            raise ValueError(f"{n_rows} rows do not split into {n_global_crops} global crops")
        batch = n_rows // n_global_crops
        teacher = teacher_probs.float().view(n_global_crops, batch, n_protos)
        log_p = F.log_softmax(student_global_logits.float() / self.student_temp, dim=-1)
        log_p = log_p.view(n_global_crops, batch, n_protos)

        total = log_p.new_zeros(())
        n_pairs = 0
        for i in range(n_global_crops):
            for j in range(n_global_crops):
                if i != j:
                    total = total - (teacher[j] * log_p[i]).sum()
                    n_pairs += 1
        if student_local_logits is not None and student_local_logits.shape[0] > 0:
            n_local_rows = student_local_logits.shape[0]
            if n_local_rows % batch:
                raise ValueError(f"{n_local_rows} local rows do not split into crops of batch {batch}")
            n_local = n_local_rows // batch
            log_q = F.log_softmax(student_local_logits.float() / self.student_temp, dim=-1)
            log_q = log_q.view(n_local, batch, n_protos)
            # Every local crop meets every teacher global crop: sum the targets once.
            total = total - (teacher.sum(dim=0).unsqueeze(0) * log_q).sum()
            n_pairs += n_local * n_global_crops
        if n_pairs == 0:
            raise ValueError("no (student crop, other teacher crop) pair: need 2 global crops or local crops")
        return total / (n_pairs * batch)

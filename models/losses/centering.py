"""Teacher centering: turn teacher logits into target distributions without collapse.

Two recipes: Sinkhorn-Knopp (ViT-L/g recipes) balances the assignment of a whole batch over the
prototypes; softmax centering (ImageNet-1k recipe) subtracts an EMA of the mean teacher logits.
Both count the batch over all processes (sums are all-reduced when torch.distributed is
initialised), so N processes with B/N rows each give the same targets as 1 process with B rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op is None else op)
    return t


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temp: float, n_iterations: int = 3) -> torch.Tensor:
    """Balanced soft assignment of the rows of ``teacher_logits`` (B, K) to the K prototypes.

    Alternately normalises the K x B matrix exp(logits / temp) so that every prototype receives
    1/K of the total mass and every sample 1/B, B being the number of rows over all processes;
    each returned row sums to 1. For iBOT the rows are the masked patches of this process, so B
    is the global number of masked patches. Computed in float32; the global maximum logit is
    subtracted before ``exp`` (it cancels in the first normalisation) so low temperatures cannot
    overflow.
    """
    logits = teacher_logits.float() / temp
    n_rows, n_protos = logits.shape
    peak = logits.max() if n_rows > 0 else logits.new_tensor(float("-inf"))
    peak = _all_reduce(peak.clone(), dist.ReduceOp.MAX if _distributed() else None)
    q = torch.exp(logits - peak).t()  # K x B
    total_rows = _all_reduce(torch.tensor(float(n_rows), device=q.device))
    q /= _all_reduce(q.sum())
    tiny = torch.finfo(torch.float32).tiny
    for _ in range(n_iterations):
        per_prototype = _all_reduce(q.sum(dim=1, keepdim=True))
        q /= per_prototype.clamp_(min=tiny)
        q /= n_protos
        q /= q.sum(dim=0, keepdim=True).clamp_(min=tiny)
        q /= total_rows
    q *= total_rows
    return q.t()


class SoftmaxCentering(nn.Module):
    """Softmax of (logits - center) / temp, with ``center`` an EMA of the mean teacher logits.

    ``forward`` uses the center accumulated from previous batches and then folds the current
    batch in (the official code does the same through a one-step-delayed async update).
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, temp: float, update: bool = True) -> torch.Tensor:
        probs = F.softmax((teacher_logits.float() - self.center) / temp, dim=-1)
        if update:
            self.update(teacher_logits)
        return probs

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """EMA step towards the mean of ``teacher_logits`` rows over all processes."""
        rows = teacher_logits.float().reshape(-1, self.center.shape[-1])
        stats = torch.cat([rows.sum(dim=0), rows.new_tensor([rows.shape[0]])])
        stats = _all_reduce(stats)
        count = stats[-1]
        batch_mean = stats[:-1].unsqueeze(0) / count.clamp(min=1.0)
        new_center = self.center * self.momentum + batch_mean * (1.0 - self.momentum)
        # A batch with no rows anywhere (e.g. no masked patch) leaves the center unchanged.
        self.center.copy_(torch.where(count > 0, new_center, self.center))

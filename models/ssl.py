"""Student/teacher meta-architecture of DINOv2 self-supervised pretraining.

The student (backbone + DINO head + optional separate iBOT head) learns by gradient; the
teacher is a copy updated only as an exponential moving average of the student. Per step:

- the teacher sees the global crops only; its CLS outputs become DINO targets and its patch
  tokens at the student's masked positions become iBOT targets, after centering
  (softmax centering or Sinkhorn-Knopp) at the scheduled teacher temperature;
- the student sees global (masked) and local crops in one packed backbone call, and all CLS
  and masked-patch rows of a head go through that head in one call;
- losses: DINO over (student crop, other teacher global crop) pairs, iBOT per image over its
  masked patches, KoLeo on the backbone CLS of each global crop.

The recipe (shared vs separate iBOT head, centering kind) is data passed in, not a branch of
the training code. The module is pure torch: distribution (FSDP2) and optimisation live in the
training loop, which calls :meth:`SSLMetaArch.forward_losses` then ``backward`` and
:meth:`SSLMetaArch.update_teacher`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from models.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, SoftmaxCentering, sinkhorn_knopp

Centering = Literal["softmax", "sinkhorn_knopp"]


@dataclass(frozen=True)
class SSLLossWeights:
    """Weights of the three objectives (0 turns a term off, and its compute with it)."""

    dino: float = 1.0
    ibot: float = 1.0
    koleo: float = 0.1


class TeacherTargets(nn.Module):
    """Turns teacher logits into target distributions: softmax centering or Sinkhorn-Knopp."""

    def __init__(self, kind: Centering, n_prototypes: int, center_momentum: float = 0.9, sk_iterations: int = 3):
        super().__init__()
        if kind not in ("softmax", "sinkhorn_knopp"):
            raise ValueError(f"unknown centering {kind!r}")
        self.kind = kind
        self.sk_iterations = sk_iterations
        self.softmax = SoftmaxCentering(n_prototypes, center_momentum) if kind == "softmax" else None

    @torch.no_grad()
    def forward(self, logits: Tensor, temp: float) -> Tensor:
        if self.softmax is not None:
            return self.softmax(logits, temp)
        return sinkhorn_knopp(logits, temp, self.sk_iterations)


class SSLMetaArch(nn.Module):
    """DINOv2 student + EMA teacher with DINO, iBOT and KoLeo objectives.

    ``backbone`` must provide ``forward_features(x | [x...], masks)`` returning the DINOv2 output
    dict(s); ``dino_head`` maps backbone features to prototype logits; ``ibot_head`` is a
    separate head for masked patches, or None to share the DINO head (ImageNet-1k recipe).
    """

    def __init__(
        self,
        backbone: nn.Module,
        dino_head: nn.Module,
        ibot_head: nn.Module | None = None,
        *,
        dino_prototypes: int,
        ibot_prototypes: int | None = None,
        centering: Centering = "softmax",
        center_momentum: float = 0.9,
        sk_iterations: int = 3,
        student_temp: float = 0.1,
        weights: SSLLossWeights = SSLLossWeights(),
        n_global_crops: int = 2,
    ) -> None:
        super().__init__()
        if n_global_crops < 1:
            raise ValueError("need at least one global crop")
        student = {"backbone": backbone, "dino_head": dino_head}
        if ibot_head is not None:
            student["ibot_head"] = ibot_head
        self.student = nn.ModuleDict(student)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.weights = weights
        self.n_global_crops = n_global_crops
        self.separate_ibot_head = ibot_head is not None
        ibot_k = ibot_prototypes if self.separate_ibot_head else dino_prototypes
        if ibot_k is None:
            raise ValueError("a separate iBOT head needs ibot_prototypes")
        self.dino_targets = TeacherTargets(centering, dino_prototypes, center_momentum, sk_iterations)
        self.ibot_targets = TeacherTargets(centering, ibot_k, center_momentum, sk_iterations)
        self.dino_loss = DINOLoss(student_temp)
        self.ibot_loss = IBOTPatchLoss(student_temp)
        self.koleo_loss = KoLeoLoss()
        self.dino_prototypes = dino_prototypes
        self.ibot_prototypes = ibot_k

    def train(self, mode: bool = True) -> "SSLMetaArch":
        """The teacher always runs in eval mode (no stochastic depth)."""
        super().train(mode)
        self.teacher.eval()
        return self

    # ---- teacher ---------------------------------------------------------------------------

    @torch.no_grad()
    def _teacher_targets(self, global_crops: Tensor, mask_indices: Tensor | None, temp: float) -> dict[str, Tensor]:
        out = self.teacher["backbone"].forward_features(global_crops)
        cls = out["x_norm_clstoken"]
        masked = None
        if mask_indices is not None:
            patches = out["x_norm_patchtokens"]
            masked = patches.flatten(0, 1).index_select(0, mask_indices)
        dino_head = self.teacher["dino_head"]
        if masked is not None and not self.separate_ibot_head:
            logits = dino_head(torch.cat([cls, masked]))
            cls_logits, patch_logits = logits[: cls.shape[0]], logits[cls.shape[0] :]
        else:
            cls_logits = dino_head(cls)
            patch_logits = self.teacher["ibot_head"](masked) if masked is not None else None
        targets = {"dino": self.dino_targets(cls_logits, temp)}
        if patch_logits is not None:
            targets["ibot"] = self.ibot_targets(patch_logits, temp)
        return targets

    # ---- student ---------------------------------------------------------------------------

    def forward_losses(self, batch: dict[str, Tensor], teacher_temp: float) -> dict[str, Tensor]:
        """All loss terms of one step; ``"total"`` carries the graph, the others are detached.

        ``batch`` is a ``models.collate.MultiCropCollator`` output: ``collated_global_crops``
        [G*B,3,H,W] (crop-major), ``collated_local_crops`` [L*B,3,h,w] (L may be 0), and for
        iBOT ``collated_masks`` [G*B,N] bool, ``mask_indices_list`` (flat indices of masked
        patches into [G*B*N]) and ``masks_weight`` (1 / masked patches of each row's image).
        """
        global_crops = batch["collated_global_crops"]
        local_crops = batch.get("collated_local_crops")
        has_local = local_crops is not None and local_crops.shape[0] > 0
        n_images = global_crops.shape[0]
        use_ibot = (
            self.weights.ibot > 0 and "collated_masks" in batch and batch["mask_indices_list"].numel() > 0
        )
        masks = batch["collated_masks"] if use_ibot else None
        mask_indices = batch["mask_indices_list"] if use_ibot else None

        targets = self._teacher_targets(global_crops, mask_indices, teacher_temp)

        crops = [global_crops] + ([local_crops] if has_local else [])
        outs = self.student["backbone"].forward_features(crops, masks=[masks] + ([None] if has_local else []))
        g_out = outs[0]
        g_cls = g_out["x_norm_clstoken"]
        l_cls = outs[1]["x_norm_clstoken"] if has_local else g_cls[:0]
        s_masked = g_out["x_norm_patchtokens"].flatten(0, 1).index_select(0, mask_indices) if use_ibot else None

        dino_head = self.student["dino_head"]
        rows = [l_cls, g_cls] + ([s_masked] if use_ibot and not self.separate_ibot_head else [])
        logits = dino_head(torch.cat(rows))
        l_logits, g_logits = logits[: l_cls.shape[0]], logits[l_cls.shape[0] : l_cls.shape[0] + g_cls.shape[0]]
        if use_ibot:
            if self.separate_ibot_head:
                p_logits = self.student["ibot_head"](s_masked)
            else:
                p_logits = logits[l_cls.shape[0] + g_cls.shape[0] :]

        terms: dict[str, Tensor] = {}
        total = g_cls.new_zeros((), dtype=torch.float32)
        if self.weights.dino > 0:
            dino = self.dino_loss(g_logits, targets["dino"], l_logits if has_local else None, self.n_global_crops)
            terms["dino_loss"] = dino
            total = total + self.weights.dino * dino
        if use_ibot:
            ibot = self.ibot_loss(p_logits, targets["ibot"], batch["masks_weight"], n_images)
            terms["ibot_loss"] = ibot
            total = total + self.weights.ibot * ibot
        if self.weights.koleo > 0:
            koleo = sum(self.koleo_loss(c) for c in g_cls.chunk(self.n_global_crops))
            terms["koleo_loss"] = koleo
            total = total + self.weights.koleo * koleo

        stats = {k: v.detach() for k, v in terms.items()}
        stats.update(_target_entropies(targets["dino"]))
        stats["total"] = total
        return stats

    # ---- teacher EMA -----------------------------------------------------------------------

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, on local shards when sharded.

        Sharded (FSDP2) modules may still hold gathered parameters after a forward without
        backward (the teacher's); ``reshard`` puts every module back on its local shard first.
        """
        for part in (self.student, self.teacher):
            for module in part.modules():
                if hasattr(module, "reshard") and callable(module.reshard):
                    module.reshard()
        s_params, t_params = [], []
        for name in self.student.keys():
            for (sn, sp), (tn, tp) in zip(
                self.student[name].named_parameters(), self.teacher[name].named_parameters(), strict=True
            ):
                if sn != tn:
                    raise RuntimeError(f"student/teacher parameters out of step: {sn} vs {tn}")
                s_params.append(_local(sp).detach())
                t_params.append(_local(tp))
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)


def _local(t: Tensor) -> Tensor:
    """The process-local shard of a (possibly FSDP2 DTensor) parameter."""
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def _target_entropies(probs: Tensor) -> dict[str, Tensor]:
    """Collapse diagnostics of teacher targets, in nats.

    ``teacher_entropy``: mean per-image entropy (ln K when targets are uniform: collapse to the
    uniform distribution). ``teacher_batch_entropy``: entropy of the batch-mean target (near 0
    when every image picks the same prototype: collapse to one mode).
    """
    p = probs.float()
    per_image = -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
    mean = p.mean(0)
    batch = -(mean * torch.log(mean.clamp_min(1e-12))).sum()
    return {"teacher_entropy": per_image, "teacher_batch_entropy": batch, "ln_k": torch.tensor(math.log(p.shape[-1]))}

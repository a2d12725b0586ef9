"""The frozen teacher and the student built to match it, with every check done before training.

The distillation targets are the teacher's own head outputs (DINO on CLS, iBOT on patches), so a
teacher without heads cannot be distilled: the released DINOv2 backbones ship none, and new
heads on a frozen backbone would first have to be trained by self-supervision, which is a
training run, not a distillation. The student's heads predict over the teacher's prototypes, so
their output sizes, and whether iBOT has its own head, follow the teacher.
"""

from __future__ import annotations

import torch
from torch import nn

from models.presets import vit_kwargs
from tasks.distill.config import DistillConfig
from tasks.release.load import LoadedModel, load_model
from tasks.train.config import LossConfig, TrainConfig
from lvd.errors import LvdError


class DistillationError(LvdError, ValueError):
    """The teacher/student pair cannot be distilled; the message says why."""


def head_shape(head: nn.Module) -> dict[str, int]:
    """Prototypes, hidden width, bottleneck and MLP depth of a DINOHead."""
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    return {
        "prototypes": int(head.last_layer.weight.shape[0]),
        "hidden": int(linears[0].out_features) if len(linears) > 1 else 2048,
        "bottleneck": int(linears[-1].out_features),
        "nlayers": len(linears),
    }


def load_teacher(cfg: DistillConfig) -> LoadedModel:
    """Load the teacher named by ``cfg.teacher.uri`` frozen, and check it can teach."""
    if not cfg.teacher.uri:
        raise DistillationError("teacher.uri is empty: name a run, checkpoint, export or official training checkpoint")
    teacher = load_model(cfg.teacher.uri)
    if "dino_head" not in teacher.heads:
        raise DistillationError(
            f"teacher {cfg.teacher.uri} ({teacher.model_id}) has no DINO head: distillation trains the student on "
            "the teacher's own head outputs. Released DINOv2 backbones ship without heads; use a checkpoint of this "
            "project (heads are kept) or an official training checkpoint that holds them."
        )
    if cfg.teacher.arch is not None:
        expected = vit_kwargs(cfg.teacher.arch)
        got = (teacher.backbone.embed_dim, len(teacher.backbone.blocks))
        if got != (expected["embed_dim"], expected["depth"]):
            raise DistillationError(
                f"teacher.arch is {cfg.teacher.arch} (width {expected['embed_dim']}, depth {expected['depth']}) but "
                f"{cfg.teacher.uri} holds width {got[0]}, depth {got[1]}"
            )
    for part in [teacher.backbone, *teacher.heads.values()]:
        part.eval().requires_grad_(False)
    return teacher


def student_train_config(cfg: DistillConfig, teacher: LoadedModel) -> TrainConfig:
    """The TrainConfig that describes the student (heads shaped on the teacher's).

    It is stored as the distillation run's ``config.json``, so the result loads, evaluates and
    continues self-supervised training exactly like a train-dinov2 run.
    """
    dino = head_shape(teacher.heads["dino_head"])
    ibot = head_shape(teacher.heads["ibot_head"]) if "ibot_head" in teacher.heads else None
    loss = cfg.loss
    head_loss = LossConfig(
        centering=loss.centering,
        sinkhorn_iterations=loss.sinkhorn_iterations,
        center_momentum=loss.center_momentum,
        student_temp=loss.student_temp,
        dino_weight=loss.dino_weight,
        dino_prototypes=dino["prototypes"],
        head_hidden_dim=loss.head_hidden_dim or dino["hidden"],
        head_bottleneck_dim=loss.head_bottleneck_dim or dino["bottleneck"],
        head_nlayers=loss.head_nlayers or dino["nlayers"],
        ibot_weight=loss.ibot_weight,
        ibot_separate_head=ibot is not None,
        ibot_prototypes=ibot["prototypes"] if ibot else dino["prototypes"],
        ibot_bottleneck_dim=(loss.head_bottleneck_dim or ibot["bottleneck"]) if ibot else 256,
        mask_ratio=loss.mask_ratio,
        mask_probability=loss.mask_probability if loss.ibot_patches == "masked" else 0.0,
        koleo_weight=loss.koleo_weight,
    )
    return TrainConfig(
        model=cfg.student.model_copy(update={"drop_path_rate": 0.0}),
        crops=cfg.crops,
        loss=head_loss,
        optim=cfg.optim,
        checkpoint=cfg.checkpoint,
        eval=cfg.eval,
        data=cfg.data,
        precision=cfg.precision,
        seed=cfg.seed,
        device=cfg.device,
        cpu_threads=cfg.cpu_threads,
        log_every_steps=cfg.log_every_steps,
    )


def check_pair(cfg: DistillConfig, teacher: LoadedModel, student_backbone: nn.Module) -> None:
    """Refuse a student larger than its teacher, or patch grids that iBOT cannot pair."""
    n_teacher = sum(p.numel() for p in teacher.backbone.parameters())
    n_student = sum(p.numel() for p in student_backbone.parameters())
    if n_student > n_teacher:
        raise DistillationError(
            f"student {cfg.student.arch} ({n_student / 1e6:.2f}M parameters) is larger than its teacher "
            f"{teacher.model_id} ({n_teacher / 1e6:.2f}M): distill into a smaller model"
        )
    if cfg.loss.ibot_weight > 0 and student_backbone.patch_size != teacher.backbone.patch_size:
        raise DistillationError(
            f"iBOT pairs student and teacher patches, but the student's patch size is {student_backbone.patch_size} "
            f"and the teacher's {teacher.backbone.patch_size}: use the same patch size or loss.ibot_weight=0"
        )
    if cfg.crops.global_crops_size % teacher.backbone.patch_size:
        raise DistillationError(
            f"crops.global_crops_size {cfg.crops.global_crops_size} is not a multiple of the teacher's patch size "
            f"{teacher.backbone.patch_size}"
        )


def move_teacher(teacher: LoadedModel, device: torch.device) -> None:
    teacher.backbone.to(device)
    for head in teacher.heads.values():
        head.to(device)

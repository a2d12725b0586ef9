"""The frozen teacher and the student built to match it, with every check done before training.

With ``loss.targets="heads"`` the targets are the teacher's own head outputs (DINO on CLS, iBOT on
patches), and the student's heads predict over the teacher's prototypes, so their output sizes,
and whether iBOT has its own head, follow the teacher.

The released DINOv2 backbones ship no heads. Fitting new heads on the frozen backbone first would
be a self-supervised run of its own (heads, their EMA, centering) whose prototypes the student
would then imitate: an indirect target, only as good as the fitted heads. ``"features"`` instead
matches the student to what the released model is used for, its CLS and patch features, through
one linear projection per token kind on the student (:func:`add_feature_projections`). The
student's own heads are then untouched by the objective: they are built at
``loss.head_prototypes`` and frozen, so the result still loads and continues like a training run.
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


def uses_features(cfg: DistillConfig, teacher: LoadedModel) -> bool:
    """Whether the student learns the teacher's features (True) or its head outputs (False)."""
    return cfg.loss.targets == "features" or (cfg.loss.targets == "auto" and "dino_head" not in teacher.heads)


def load_teacher(cfg: DistillConfig) -> LoadedModel:
    """Load the teacher named by ``cfg.teacher.uri`` frozen, and check it can teach."""
    if not cfg.teacher.uri:
        raise DistillationError("teacher.uri is empty: name a run, checkpoint, export or official training checkpoint")
    teacher = load_model(cfg.teacher.uri)
    if not uses_features(cfg, teacher) and "dino_head" not in teacher.heads:
        raise DistillationError(
            f"teacher {cfg.teacher.uri} ({teacher.model_id}) has no DINO head, and loss.targets=heads trains the "
            "student on the teacher's own head outputs. Released DINOv2 backbones ship without heads: use "
            "loss.targets=features (or auto) to distil their features, or a checkpoint that holds heads."
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
    continues self-supervised training exactly like a train-dinov2 run. With feature targets the
    heads (untrained, frozen) take ``loss.head_*`` or the training defaults, one shared by iBOT.
    """
    loss = cfg.loss
    if uses_features(cfg, teacher):
        defaults = LossConfig()
        dino = {"prototypes": loss.head_prototypes, "hidden": defaults.head_hidden_dim,
                "bottleneck": defaults.head_bottleneck_dim, "nlayers": defaults.head_nlayers}
        ibot = None
    else:
        dino = head_shape(teacher.heads["dino_head"])
        ibot = head_shape(teacher.heads["ibot_head"]) if "ibot_head" in teacher.heads else None
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
            f"the patch loss pairs student and teacher patches, but the student's patch size is {student_backbone.patch_size} "
            f"and the teacher's {teacher.backbone.patch_size}: use the same patch size or loss.ibot_weight=0"
        )
    if cfg.crops.global_crops_size % teacher.backbone.patch_size:
        raise DistillationError(
            f"crops.global_crops_size {cfg.crops.global_crops_size} is not a multiple of the teacher's patch size "
            f"{teacher.backbone.patch_size}"
        )


def add_feature_projections(model: nn.Module, teacher: LoadedModel) -> None:
    """Give the student the linear maps from its width to the teacher's (``cls_proj`` for the CLS
    token, ``patch_proj`` for patch tokens) and freeze its heads, which feature targets do not train.

    The projections join ``model.student`` (trained, checkpointed) and, as the SSL model wants every
    student part mirrored, ``model.teacher`` (followed by EMA, unused). The model that loads from the
    run is built from its ``config.json`` without them: they are only the objective's means.
    """
    import copy

    width, target = model.student["backbone"].embed_dim, teacher.backbone.embed_dim
    for name in ("cls_proj", "patch_proj"):
        proj = nn.Linear(width, target)
        model.student[name] = proj
        model.teacher[name] = copy.deepcopy(proj).requires_grad_(False)
    for name in ("dino_head", "ibot_head"):
        if name in model.student:
            model.student[name].requires_grad_(False)


def move_teacher(teacher: LoadedModel, device: torch.device) -> None:
    teacher.backbone.to(device)
    for head in teacher.heads.values():
        head.to(device)

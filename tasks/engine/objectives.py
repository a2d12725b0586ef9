"""What varies between pretraining, distillation and copy-detector training: the model built, the
loss of a batch, the files written when a run starts and the summary's extras (and, where an
objective has its own, the augmentation: ``augmentation(phase)``). The loop is :mod:`tasks.engine.loop`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from models.losses.koleo import KoLeoLoss
from models.ssl import SSLMetaArch
from tasks.copydet.config import CopyDetectorConfig
from tasks.copydet.edits import CopyViews
from tasks.copydet.model import CopyDetector, sscd_losses
from tasks.copydet.train_config import copy_train_config
from tasks.distill.config import DistillConfig
from tasks.distill.objective import distill_losses, feature_losses
from tasks.distill.teacher import (
    add_feature_projections, check_pair, load_teacher, move_teacher, student_train_config, uses_features,
)
from tasks.train.build import build_backbone, build_ssl
from tasks.train.config import TrainConfig


class Objective(Protocol):
    name: str
    cfg: TrainConfig  # what the loop runs: optimiser, schedules, data, cadences, the model's shape
    distributed: bool  # may run in several processes

    def build(self) -> SSLMetaArch: ...  # seeded by the loop; nothing trained yet
    def to(self, device: torch.device) -> None: ...  # move what the objective holds beside the model
    def losses(self, model: SSLMetaArch, batch: dict, teacher_temp: float) -> dict[str, torch.Tensor]: ...
    def start_files(self) -> dict[str, bytes]: ...  # run-relative name -> contents, written before step 1
    def summary(self, model: SSLMetaArch, knn) -> dict[str, Any]: ...  # knn(backbone) -> k-NN results or {}


class SSLObjective:
    """Self-supervised pretraining: the student learns from its own EMA teacher."""

    name, distributed = "pretraining", True

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def build(self) -> SSLMetaArch:
        return build_ssl(self.cfg)

    def to(self, device: torch.device) -> None:
        pass

    def losses(self, model: SSLMetaArch, batch: dict, teacher_temp: float) -> dict[str, torch.Tensor]:
        return model.forward_losses(batch, teacher_temp)

    def start_files(self) -> dict[str, bytes]:
        return {}

    def summary(self, model: SSLMetaArch, knn) -> dict[str, Any]:
        return {}


class DistillObjective:
    """Distillation: the student learns from a frozen teacher's head outputs, or from its features
    when it has no heads (``loss.targets``); the student's EMA is the result.

    The teacher is loaded and checked on construction, the student's config (``cfg``) follows from it.
    """

    name, distributed = "distillation", False

    def __init__(self, cfg: DistillConfig) -> None:
        self.distill_cfg = cfg
        self.teacher = load_teacher(cfg)
        self.features = uses_features(cfg, self.teacher)
        self.cfg = student_train_config(cfg, self.teacher)

    def build(self) -> SSLMetaArch:
        torch.manual_seed(self.cfg.seed)
        model = build_ssl(self.cfg)
        check_pair(self.distill_cfg, self.teacher, model.student["backbone"])
        # The student always sees every patch, so its mask token never gets a gradient; frozen, it has no
        # optimizer state that a resumed run would look for in the checkpoint.
        for part in (model.student, model.teacher):
            part["backbone"].mask_token.requires_grad_(False)
        if self.features:
            add_feature_projections(model, self.teacher)
        return model

    def to(self, device: torch.device) -> None:
        move_teacher(self.teacher, device)

    def losses(self, model: SSLMetaArch, batch: dict, teacher_temp: float) -> dict[str, torch.Tensor]:
        if self.features:
            return feature_losses(model, self.teacher, batch, self.distill_cfg.loss.ibot_patches)
        return distill_losses(model, self.teacher, batch, teacher_temp, self.distill_cfg.loss.ibot_patches)

    def start_files(self) -> dict[str, bytes]:
        # config.json describes the student, so the run loads and continues like a training run
        return {"config.json": self.cfg.model_dump_json(indent=1).encode(),
                "distill.json": self.distill_cfg.model_dump_json(indent=1).encode()}

    def summary(self, model: SSLMetaArch, knn) -> dict[str, Any]:
        t = self.teacher
        return {"teacher": {"uri": self.distill_cfg.teacher.uri, "model_id": t.model_id,
                            "params": sum(p.numel() for p in t.backbone.parameters()),
                            "targets": "features" if self.features else "heads"},
                "student": {"arch": self.distill_cfg.student.arch,
                            "params": sum(p.numel() for p in model.student["backbone"].parameters())},
                "teacher_knn": knn(t.backbone)}


class CopyDetectorObjective:
    """SSCD copy-detector training: two edited views per image, InfoNCE plus KoLeo; no teacher, no heads
    beyond the projection (:mod:`tasks.copydet.model`)."""

    name, distributed = "copy-detection", False

    def __init__(self, cfg: CopyDetectorConfig) -> None:
        self.copy_cfg = cfg
        self.cfg = copy_train_config(cfg)
        self.koleo = KoLeoLoss()

    def build(self) -> CopyDetector:
        return CopyDetector(build_backbone(self.cfg), self.copy_cfg.descriptor_dim)

    def augmentation(self, phase) -> CopyViews:
        return CopyViews(self.copy_cfg.image_size, self.copy_cfg.min_crop_area)

    def to(self, device: torch.device) -> None:
        pass

    def losses(self, model: CopyDetector, batch: dict, teacher_temp: float) -> dict[str, torch.Tensor]:
        return sscd_losses(model, batch, self.copy_cfg.temperature, self.copy_cfg.entropy_weight, self.koleo)

    def start_files(self) -> dict[str, bytes]:
        return {"copy_detector.json": self.copy_cfg.model_dump_json(indent=1).encode()}

    def summary(self, model: CopyDetector, knn) -> dict[str, Any]:
        return {"descriptor_dim": self.copy_cfg.descriptor_dim, "arch": self.copy_cfg.arch}

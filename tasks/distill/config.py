"""Typed configuration of one distillation run (DINOv2 paper, section 5 "Distillation").

The recipe is the pretraining one with a frozen, larger teacher (backbone and its own heads), no
masking and no stochastic depth in the student, iBOT on the patches of both global crops, and an
EMA of the student kept as the result. A teacher without heads (a released DINOv2 backbone)
teaches its features instead: linear projections on the student are matched to the teacher's
standardised CLS and patch features. Crops, optimiser, schedules, checkpoints, k-NN and data
reuse the training sections, so a value means the same thing in both stages.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.train.config import (
    Arch,
    CheckpointConfig,
    CropsConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherConfig(_Section):
    """The frozen teacher."""

    uri: str = Field(
        "",
        description="Run URI or checkpoint directory of this project, an `lvd export` .safetensors, or an official "
        "DINOv2 training checkpoint (.pth) that holds the heads. Empty: the train-dinov2 run of the same preset.",
    )
    arch: Arch | None = Field(
        None, description="Expected teacher architecture; a checkpoint holding another one is refused before work starts."
    )


class DistillLossConfig(_Section):
    """Objectives. Prototype counts and head layout come from the teacher's heads."""

    targets: Literal["auto", "heads", "features"] = Field(
        "auto",
        description="What the student learns: 'heads' the teacher's DINO/iBOT head outputs (the paper's "
        "distillation); 'features' the teacher's CLS and patch features themselves, through linear projections "
        "on the student (cosine + smooth-L1 on the teacher's standardised features), for a teacher without heads; "
        "'auto' heads when the teacher has them, features otherwise.",
    )
    centering: Literal["softmax", "sinkhorn_knopp"] = Field(
        "sinkhorn_knopp", description="How teacher logits become targets: EMA softmax centering or Sinkhorn-Knopp."
    )
    sinkhorn_iterations: int = Field(3, ge=1, le=20, description="Sinkhorn-Knopp iterations.")
    center_momentum: float = Field(0.9, ge=0, lt=1, description="EMA momentum of the softmax center.")
    student_temp: float = Field(0.1, gt=0, le=1, description="Student softmax temperature.")
    dino_weight: float = Field(1.0, ge=0, description="Weight of the CLS loss (DINO, or the CLS feature match).")
    ibot_weight: float = Field(
        1.0, ge=0, description="Weight of the patch loss (iBOT, or the patch feature match; 0 disables it)."
    )
    koleo_weight: float = Field(0.1, ge=0, description="Weight of KoLeo on the student's global-crop CLS.")
    ibot_patches: Literal["all", "masked"] = Field(
        "all",
        description="'all': iBOT on every patch of both global crops (the paper's distillation); 'masked': only at "
        "sampled mask positions (the student still sees every patch), cheaper with very large heads.",
    )
    mask_ratio: tuple[float, float] = Field((0.1, 0.5), description="Patch fraction range for 'masked' positions.")
    mask_probability: float = Field(0.5, ge=0, le=1, description="Fraction of global crops with 'masked' positions.")
    head_hidden_dim: int | None = Field(None, ge=8, le=16384, description="Student head MLP width (None: the teacher's).")
    head_bottleneck_dim: int | None = Field(None, ge=4, le=2048, description="Student head bottleneck (None: the teacher's).")
    head_nlayers: int | None = Field(None, ge=1, le=5, description="Linear layers of the student head MLP (None: the teacher's).")
    head_prototypes: int = Field(
        4096, ge=2, le=1 << 18,
        description="With 'features' targets only: prototypes of the student's DINO head. Feature distillation "
        "leaves the student's heads untrained and frozen; they are kept so the result continues self-supervised "
        "like a training run (with 'heads' the teacher's count is used).",
    )

    @model_validator(mode="after")
    def _mask_ratio_ordered(self) -> "DistillLossConfig":
        lo, hi = self.mask_ratio
        if not 0 <= lo <= hi < 1:
            raise ValueError(f"mask_ratio must satisfy 0 <= min <= max < 1, got {self.mask_ratio}")
        return self


class DistillConfig(_Section):
    """One distillation run: teacher, student, crops, objectives, optimisation, cadences, data."""

    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="The frozen teacher.")
    student: ModelConfig = Field(
        default_factory=lambda: ModelConfig(arch="vit_small", drop_path_rate=0.0),
        description="The student backbone (no stochastic depth in distillation).",
    )
    crops: CropsConfig = Field(default_factory=CropsConfig, description="Multi-crop augmentation.")
    loss: DistillLossConfig = Field(default_factory=DistillLossConfig, description="Objectives.")
    optim: OptimConfig = Field(
        default_factory=OptimConfig,
        description="Optimiser and schedules; momentum_teacher* is the EMA of the student kept as the result.",
    )
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpoint cadence.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="k-NN of the student EMA (and the teacher once).")
    data: DataConfig = Field(default_factory=DataConfig, description="Training data source.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="'auto': bf16 autocast on GPU, fp32 on CPU.")
    seed: int = Field(0, ge=0, description="Seed of student weights, data order, crops and masks.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device: 'auto' picks CUDA when present.")
    cpu_threads: int = Field(0, ge=0, le=256, description="torch intra-op threads on CPU (0: torch's default).")
    log_every_steps: int = Field(1, ge=1, description="Metrics rows are written every this many steps.")

    @model_validator(mode="after")
    def _no_stochastic_depth(self) -> "DistillConfig":
        if self.student.drop_path_rate:
            raise ValueError("student.drop_path_rate: distillation trains without stochastic depth; use 0")
        return self

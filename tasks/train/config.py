"""Typed configuration of one DINOv2 pretraining run.

Recipes differ only in values (presets in configs/*.yaml under ``train:``), never in code:
the ImageNet-1k recipe is softmax centering with one head shared by DINO and iBOT; the
ViT-L/g recipes are Sinkhorn-Knopp with a separate iBOT head. Every schedule is given in
fractions of the run, so a 300-step CPU run and a 625k-iteration run use the same shapes
(see DESIGN "Collapse": schedules in absolute epochs make short runs collapse).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Arch = Literal["vit_pico", "vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant2"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    """The student/teacher backbone."""

    arch: Arch = Field("vit_small", description="ViT preset from models.vit.")
    patch_size: int = Field(14, ge=2, le=32, description="Patch size in pixels.")
    num_register_tokens: int = Field(0, ge=0, le=16, description="Register tokens (0 = none, 4 for _reg4).")
    ffn_layer: Literal["preset", "mlp", "swiglu"] = Field(
        "preset", description="Feed-forward type of every block ('preset': the architecture's own)."
    )
    layerscale: float = Field(1e-5, ge=0, le=1, description="LayerScale init value (0 disables LayerScale).")
    drop_path_rate: float | None = Field(
        None, ge=0, lt=1, description="Student stochastic depth rate (None: the preset's; the teacher has none)."
    )
    drop_path_uniform: bool = Field(True, description="Same drop rate in every block instead of a linear ramp.")
    efficient_drop_path: bool = Field(
        True, description="Compute dropped residual branches only on the kept subset of samples."
    )
    pack_crops: bool = Field(True, description="Run global and local crops through the blocks as one packed sequence.")


class CropsConfig(_Section):
    """Multi-crop augmentation."""

    global_crops_size: int = Field(224, ge=8, le=1024, description="Side of the 2 global crops (px).")
    local_crops_size: int = Field(98, ge=4, le=512, description="Side of the local crops (px).")
    local_crops_number: int = Field(8, ge=0, le=16, description="Local crops per image.")
    global_crops_scale: tuple[float, float] = Field((0.32, 1.0), description="Area fraction range of global crops.")
    local_crops_scale: tuple[float, float] = Field((0.05, 0.32), description="Area fraction range of local crops.")
    hflip_p: float = Field(0.5, ge=0, le=1, description="Horizontal flip probability.")
    color_jitter_p: float = Field(0.8, ge=0, le=1, description="Probability of colour jitter per crop.")
    brightness: float = Field(0.4, ge=0, le=1, description="Colour jitter brightness strength.")
    contrast: float = Field(0.4, ge=0, le=1, description="Colour jitter contrast strength.")
    saturation: float = Field(0.2, ge=0, le=1, description="Colour jitter saturation strength.")
    hue: float = Field(0.1, ge=0, le=0.5, description="Colour jitter hue strength.")
    grayscale_p: float = Field(0.2, ge=0, le=1, description="Probability of converting a crop to grayscale.")
    solarize_p: float = Field(0.2, ge=0, le=1, description="Solarisation probability of the second global crop.")
    blur: Literal["paper", "official"] = Field(
        "paper",
        description="'paper': blur p=1.0/0.1/0.5 (global 1/global 2/local); 'official': the released code's "
        "inverted behaviour (never/0.9/0.5).",
    )

    @model_validator(mode="after")
    def _scales_ordered(self) -> "CropsConfig":
        for name in ("global_crops_scale", "local_crops_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        return self


class LossConfig(_Section):
    """Objectives, heads and teacher centering (the recipe)."""

    centering: Literal["softmax", "sinkhorn_knopp"] = Field(
        "softmax", description="Teacher target normalisation: EMA softmax centering or Sinkhorn-Knopp."
    )
    sinkhorn_iterations: int = Field(3, ge=1, le=20, description="Sinkhorn-Knopp iterations.")
    center_momentum: float = Field(0.9, ge=0, lt=1, description="EMA momentum of the softmax center.")
    student_temp: float = Field(0.1, gt=0, le=1, description="Student softmax temperature.")
    dino_weight: float = Field(1.0, ge=0, description="Weight of the DINO (CLS) loss.")
    dino_prototypes: int = Field(65536, ge=2, le=1 << 18, description="K, prototypes of the DINO head.")
    head_hidden_dim: int = Field(2048, ge=8, le=16384, description="Hidden width of the head MLPs.")
    head_bottleneck_dim: int = Field(256, ge=4, le=2048, description="Bottleneck width of the DINO head.")
    head_nlayers: int = Field(3, ge=1, le=5, description="Linear layers in each head MLP.")
    head_train_norm: bool = Field(
        True, description="Train the prototypes' weight-norm magnitude, as the official head does; off fixes "
        "every prototype at unit norm, so the logits are cosine similarities.",
    )
    ibot_weight: float = Field(1.0, ge=0, description="Weight of the iBOT masked-patch loss (0 disables it).")
    ibot_separate_head: bool = Field(False, description="Separate iBOT head (L/g recipe) instead of sharing the DINO head.")
    ibot_prototypes: int = Field(65536, ge=2, le=1 << 18, description="Prototypes of a separate iBOT head.")
    ibot_bottleneck_dim: int = Field(256, ge=4, le=2048, description="Bottleneck of a separate iBOT head.")
    mask_ratio: tuple[float, float] = Field((0.1, 0.5), description="Range of patch fractions masked per image.")
    mask_probability: float = Field(0.5, ge=0, le=1, description="Fraction of global crops that get a mask.")
    koleo_weight: float = Field(0.1, ge=0, description="Weight of KoLeo on the student's global-crop CLS.")

    @model_validator(mode="after")
    def _mask_ratio_ordered(self) -> "LossConfig":
        lo, hi = self.mask_ratio
        if not 0 <= lo <= hi < 1:
            raise ValueError(f"mask_ratio must satisfy 0 <= min <= max < 1, got {self.mask_ratio}")
        return self


class OptimConfig(_Section):
    """AdamW, schedules (fractions of the run) and parameter groups."""

    total_steps: int = Field(1000, ge=1, description="Optimiser steps of the whole run.")
    batch_size_per_rank: int = Field(64, ge=2, le=4096, description="Images per process per step (>= 2 for KoLeo).")
    global_batch_size: int | None = Field(
        None,
        ge=2,
        le=1 << 20,
        description="Images per step over all processes; when set, each process takes global_batch_size / "
        "world size (a world that does not divide it is refused) and batch_size_per_rank is not used, so the "
        "run keeps its batch (and learning rate) whatever the number of processes.",
    )
    base_lr: float = Field(4e-3, gt=0, le=1, description="Peak LR before scaling by sqrt(global batch / 1024).")
    lr_scaling: Literal["sqrt_wrt_1024", "none"] = Field("sqrt_wrt_1024", description="How the peak LR follows the batch.")
    min_lr: float = Field(1e-6, ge=0, description="LR at the end of the cosine.")
    warmup_fraction: float = Field(0.1, ge=0, le=1, description="Linear LR warmup, fraction of the run.")
    weight_decay: float = Field(0.04, ge=0, le=1, description="Weight decay at the start (cosine).")
    weight_decay_end: float = Field(0.4, ge=0, le=1, description="Weight decay at the end.")
    adamw_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adamw_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    layerwise_decay: float = Field(0.9, gt=0, le=1, description="LR multiplier per block towards the input.")
    patch_embed_lr_mult: float = Field(0.2, ge=0, le=1, description="Extra LR multiplier of the patch embedding.")
    decay_tokens: bool = Field(
        True, description="Weight decay on the class, register and mask tokens and the positional embedding, as "
        "the official recipe; off exempts them like biases and norms.",
    )
    clip_grad: float = Field(3.0, ge=0, description="Gradient-norm clip per module (0 disables).")
    freeze_last_layer_fraction: float = Field(
        0.01, ge=0, le=1, description="Fraction of the run with the prototype layers' LR at 0."
    )
    momentum_teacher: float | None = Field(
        None, ge=0, le=1, description="Teacher EMA momentum at the start, cosine to momentum_teacher_end (None: "
        "from momentum_teacher_lag and the run's length).",
    )
    momentum_teacher_lag: float = Field(
        0.001, gt=0, le=1, description="When momentum_teacher is None: the teacher EMA's time constant at the "
        "start as a fraction of the run, momentum 1 - 1/(lag x total_steps); 0.001 gives the ImageNet-1k "
        "recipe's 0.992 at its 125k steps.",
    )
    momentum_teacher_min: float = Field(
        0.9, ge=0, lt=1, description="Lowest start momentum the lag gives (a teacher averages at least "
        "1/(1 - min) steps; 0.9 from 10k steps down).",
    )
    momentum_teacher_end: float = Field(1.0, ge=0, le=1, description="Teacher EMA momentum at the end.")
    teacher_temp: float = Field(0.07, gt=0, le=1, description="Teacher temperature after its warmup.")
    warmup_teacher_temp: float = Field(0.04, gt=0, le=1, description="Teacher temperature at the start.")
    warmup_teacher_temp_fraction: float = Field(
        0.3, ge=0, le=1, description="Linear teacher-temperature warmup, fraction of the run."
    )


    def teacher_momentum_start(self) -> float:
        """The teacher EMA momentum at step 0: ``momentum_teacher``, or the one the lag gives this run."""
        from models.schedules import momentum_for_lag

        if self.momentum_teacher is not None:
            return self.momentum_teacher
        return momentum_for_lag(self.total_steps, self.momentum_teacher_lag, self.momentum_teacher_min)

    def schedule_steps(self) -> dict[str, int]:
        """Steps of each warm-up (what the fractions give this run's length)."""
        return {
            "lr_warmup_steps": int(round(self.warmup_fraction * self.total_steps)),
            "teacher_temp_warmup_steps": int(round(self.warmup_teacher_temp_fraction * self.total_steps)),
            "freeze_last_layer_steps": int(round(self.freeze_last_layer_fraction * self.total_steps)),
        }


class CheckpointConfig(_Section):
    """When checkpoints are written."""

    every_steps: int = Field(1000, ge=1, description="Write a checkpoint every this many steps (and at the end).")
    keep: int = Field(2, ge=1, le=100, description="Most recent checkpoints kept.")


class EvalConfig(_Section):
    """k-NN evaluation during and after training (DINOv2 protocol) on a labelled set."""

    knn_every_steps: int = Field(0, ge=0, description="Run k-NN every this many steps (0: only at the end).")
    knn_dataset: Literal["fashion-mnist", "none"] = Field("fashion-mnist", description="Labelled set for k-NN.")
    knn_train_size: int = Field(10000, ge=10, le=60000, description="Labelled reference images (balanced subset).")
    knn_test_size: int = Field(2000, ge=10, le=10000, description="Query images (balanced subset of the test split).")
    knn_ks: tuple[int, ...] = Field((10, 20, 100, 200), min_length=1, description="Neighbour counts.")
    knn_temperature: float = Field(0.07, gt=0, le=10, description="Vote weight exp(similarity / T).")
    image_size: int | None = Field(None, ge=8, le=1024, description="Eval resolution (default: global crop size).")


class MonitorConfig(_Section):
    """Warnings raised on a finished run (in its log, summary.json and the evaluate report)."""

    uniform_entropy_fraction: float = Field(
        0.95, gt=0, le=1, description="Flag a run whose teacher targets keep an entropy above this fraction of "
        "ln K (K prototypes) after the teacher-temperature warm-up: near-uniform targets teach nothing.",
    )
    teacher_lag_knn_margin: float = Field(
        0.05, ge=0, le=1, description="Flag a run whose student ends more than this above its EMA teacher in "
        "k-NN top-1 at k=20 (0.05: 5 points; where k-NN is monitored, the student is evaluated at the end too).",
    )
    teacher_lag_loss_share: float = Field(
        0.25, gt=0, le=1, description="Where k-NN is not monitored: flag a run whose teacher EMA of the loss curve "
        "ends above the student's end loss by more than this share of the run's loss fall.",
    )


class DataConfig(_Section):
    """Where the training images come from and how they are read."""

    source: str = Field(
        "fashion-mnist",
        min_length=1,
        description="Committed shards stage URI (file:// or s3://, holding manifest.parquet), an image folder, "
        "or 'fashion-mnist'.",
    )
    kind: Literal["auto", "shards", "image_folder", "fashion_mnist"] = Field(
        "auto", description="Source type; 'auto' infers it from the URI."
    )
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes per rank.")
    streams: int = Field(
        8,
        ge=1,
        le=65536,
        description="Read streams the global batch is drawn from, fixed for a run: the sample order depends on "
        "it, not on the number of processes. A multiple of the world size that divides the global batch lets "
        "each process read only its own shards.",
    )
    order: Literal["global", "shards"] = Field(
        "global",
        description="'global': an image folder or Fashion-MNIST is permuted as a whole every epoch (from the seed "
        "and the epoch; only indices are held), so a folder stored class by class still gives mixed batches; "
        "'shards': shards in a seeded order, then the samples within each shard (committed shards always read "
        "this way; the earlier order of the other sources, 1,000-image chunks).",
    )
    shuffle_buffer: int = Field(1000, ge=1, le=1_000_000, description="Samples held for shuffling within shards.")


class HighResConfig(_Section):
    """High-resolution adaptation: the last steps of the run see larger crops (DINOv2 paper: 518 px).

    The model keeps its positional-embedding table at the base grid and interpolates it to the
    larger one; schedules keep running over the same global step count.
    """

    enabled: bool = Field(False, description="Run the last part of the training at the larger crop sizes.")
    fraction: float = Field(
        0.016, gt=0, lt=1, description="Share of optim.total_steps run at high resolution (0.016: 10k of 625k)."
    )
    steps: int | None = Field(
        None, ge=1, description="Steps of the phase, counted back from the end of the run (overrides fraction)."
    )
    global_crops_size: int = Field(518, ge=8, le=2048, description="Side of the global crops in the phase (px).")
    local_crops_size: int | None = Field(
        None, ge=4, le=1024, description="Side of the local crops in the phase (px; None: crops.local_crops_size)."
    )
    batch_size_per_rank: int | None = Field(
        None, ge=2, le=4096, description="Images per process per step in the phase (None: the base phase's)."
    )
    global_batch_size: int | None = Field(
        None,
        ge=2,
        le=1 << 20,
        description="Images per step over all processes in the phase, split like optim.global_batch_size "
        "(set this rather than batch_size_per_rank when the run uses optim.global_batch_size).",
    )

    def num_steps(self, total_steps: int) -> int:
        """Steps run at high resolution (0 when disabled)."""
        if not self.enabled:
            return 0
        return self.steps if self.steps is not None else int(round(self.fraction * total_steps))


class LaunchConfig(_Section):
    """How torchrun starts the processes: on one machine, or on several that meet at a rendezvous.

    Unset fields come from the environment (see :mod:`tasks.train.launch`): NNODES, NODE_RANK or
    JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs), MASTER_ADDR and MASTER_PORT, and torchrun's own
    PET_* names.
    """

    nnodes: int | None = Field(
        None, ge=1, le=4096, description="Machines in the run (None: NNODES / PET_NNODES, else 1)."
    )
    node_rank: int | None = Field(
        None,
        ge=0,
        description="This machine's index, 0 .. nnodes-1 (None: NODE_RANK, PET_NODE_RANK or JOB_COMPLETION_INDEX, "
        "else 0). The static rendezvous orders processes by it; c10d assigns ranks itself.",
    )
    rdzv_backend: Literal["c10d", "static"] = Field(
        "c10d",
        description="Multi-machine rendezvous: 'c10d' (a TCP store on the endpoint; machines may join in any "
        "order) or 'static' (the endpoint is node 0, which needs node_rank).",
    )
    rdzv_endpoint: str | None = Field(
        None,
        description="host:port every machine reaches (None: PET_RDZV_ENDPOINT, else MASTER_ADDR:MASTER_PORT, "
        "port 29500 by default).",
    )
    rdzv_id: str = Field(
        "lvd-train", min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Job id, the same on every machine."
    )
    max_restarts: int = Field(
        0, ge=0, le=100, description="Restarts of all processes after a failure (each resumes from the newest checkpoint)."
    )

    @model_validator(mode="after")
    def _endpoint_is_host_port(self) -> "LaunchConfig":
        if self.rdzv_endpoint is not None:
            host, sep, port = self.rdzv_endpoint.rpartition(":")
            if not (host and sep and port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"launch.rdzv_endpoint must be host:port, got {self.rdzv_endpoint!r}")
        if self.nnodes is not None and self.node_rank is not None and self.node_rank >= self.nnodes:
            raise ValueError(f"launch.node_rank={self.node_rank} must be below launch.nnodes={self.nnodes}")
        return self


class TrainConfig(_Section):
    """One pretraining run: model, crops, recipe, optimisation, precision, cadences, data."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="Backbone.")
    crops: CropsConfig = Field(default_factory=CropsConfig, description="Multi-crop augmentation.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Objectives, heads and centering.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser and schedules.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpoint cadence.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="k-NN evaluation.")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="Warnings about the finished run.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training data source.")
    high_res: HighResConfig = Field(
        default_factory=HighResConfig, description="High-resolution adaptation at the end of the run."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Compute precision: 'auto' is bf16 autocast on GPU and fp32 on CPU."
    )
    seed: int = Field(0, ge=0, description="Seed of weights, data order, crops and masks.")
    nproc: int = Field(
        1, ge=1, le=1024, description="Processes per machine (GPUs, or CPU processes with gloo) for the run."
    )
    launch: LaunchConfig = Field(
        default_factory=LaunchConfig, description="Machines and rendezvous of a multi-machine run."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device: 'auto' picks CUDA when present.")
    cpu_threads: int = Field(
        0, ge=0, le=256, description="torch intra-op threads per process on CPU (0: torch's default)."
    )
    log_every_steps: int = Field(1, ge=1, description="Metrics rows are written every this many steps.")

    @model_validator(mode="after")
    def _sizes_fit_the_patches(self) -> "TrainConfig":
        p = self.model.patch_size
        sizes = {"crops.global_crops_size": self.crops.global_crops_size}
        if self.crops.local_crops_number:
            sizes["crops.local_crops_size"] = self.crops.local_crops_size
        if self.high_res.enabled:
            sizes["high_res.global_crops_size"] = self.high_res.global_crops_size
            if self.crops.local_crops_number and self.high_res.local_crops_size is not None:
                sizes["high_res.local_crops_size"] = self.high_res.local_crops_size
        for key, size in sizes.items():
            if size % p:
                raise ValueError(f"{key} ({size}) must be a multiple of model.patch_size ({p})")
        return self

    @model_validator(mode="after")
    def _high_res_phase_fits_the_run(self) -> "TrainConfig":
        hr, total = self.high_res, self.optim.total_steps
        if not hr.enabled:
            return self
        if hr.global_crops_size <= self.crops.global_crops_size:
            raise ValueError(
                f"high_res.global_crops_size ({hr.global_crops_size}) must be larger than "
                f"crops.global_crops_size ({self.crops.global_crops_size})"
            )
        if hr.batch_size_per_rank is not None and hr.global_batch_size is not None:
            raise ValueError("set high_res.batch_size_per_rank or high_res.global_batch_size, not both")
        if hr.batch_size_per_rank is not None and self.optim.global_batch_size is not None:
            raise ValueError(
                "high_res.batch_size_per_rank is per process, but this run sets optim.global_batch_size so that "
                "its batch does not depend on the number of processes; give high_res.global_batch_size instead"
            )
        n = hr.num_steps(total)
        key = "high_res.steps" if hr.steps is not None else "high_res.fraction"
        if n < 1:
            raise ValueError(f"{key} gives {n} high-resolution steps of optim.total_steps={total}; need at least 1")
        if n >= total:
            raise ValueError(
                f"{key} gives {n} high-resolution steps, but the phase must be shorter than the run "
                f"(optim.total_steps={total})"
            )
        return self

    def rank_batch_size(self, world_size: int) -> int:
        """Images per process per step at ``world_size`` processes; refuses a world that the
        global batch does not split over."""
        g = self.optim.global_batch_size
        if g is None:
            return self.optim.batch_size_per_rank
        return self.split_batch(g, world_size, "optim.global_batch_size")

    def split_batch(self, global_batch: int, world_size: int, key: str) -> int:
        """``global_batch`` images per process at ``world_size`` processes (``key`` names it in errors)."""
        if global_batch % world_size:
            raise ValueError(
                f"{key}={global_batch} does not split over {world_size} processes; "
                f"use a number of processes that divides it, or change {key}"
            )
        per_rank = global_batch // world_size
        if per_rank < 2 and self.loss.koleo_weight > 0:
            raise ValueError(
                f"{key}={global_batch} over {world_size} processes leaves {per_rank} image per process; "
                "KoLeo (loss.koleo_weight) needs at least 2"
            )
        return per_rank

    def global_batch(self, world_size: int) -> int:
        return self.rank_batch_size(world_size) * world_size

    def peak_lr(self, world_size: int) -> float:
        """Base LR scaled by sqrt(global batch / 1024) (the official scaling rule)."""
        if self.optim.lr_scaling == "none":
            return self.optim.base_lr
        return self.optim.base_lr * (self.global_batch(world_size) / 1024) ** 0.5

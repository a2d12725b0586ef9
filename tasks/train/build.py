"""Build the model, augmentation and collate of a run from its TrainConfig."""

from __future__ import annotations

import torch

from models.augment import MultiCropAugmentation
from models.collate import MultiCropCollator
from models.heads import DINOHead
from models.presets import build_vit
from models.ssl import SSLLossWeights, SSLMetaArch
from tasks.train.config import TrainConfig
from tasks.train.phases import Phase


def build_backbone(cfg: TrainConfig, for_student: bool = True) -> torch.nn.Module:
    m = cfg.model
    overrides = dict(
        patch_size=m.patch_size,
        img_size=cfg.crops.global_crops_size,
        num_register_tokens=m.num_register_tokens,
        init_values=m.layerscale or None,
        drop_path_uniform=m.drop_path_uniform,
        drop_path_mode="subset" if m.efficient_drop_path else "per_sample",
        packed=m.pack_crops,
    )
    if m.ffn_layer != "preset":
        overrides["ffn_layer"] = m.ffn_layer
    if m.drop_path_rate is not None:
        overrides["drop_path_rate"] = m.drop_path_rate
    return build_vit(m.arch, **overrides)


def build_ssl(cfg: TrainConfig) -> SSLMetaArch:
    """Student/teacher meta-architecture; the teacher starts as an exact copy of the student."""
    backbone = build_backbone(cfg)
    loss = cfg.loss
    dim = backbone.embed_dim
    dino_head = DINOHead(dim, loss.dino_prototypes, loss.head_hidden_dim, loss.head_bottleneck_dim, loss.head_nlayers,
                         train_norm=loss.head_train_norm)
    ibot_head = None
    if loss.ibot_separate_head and loss.ibot_weight > 0:
        ibot_head = DINOHead(dim, loss.ibot_prototypes, loss.head_hidden_dim, loss.ibot_bottleneck_dim,
                             loss.head_nlayers, train_norm=loss.head_train_norm)
    return SSLMetaArch(
        backbone,
        dino_head,
        ibot_head,
        dino_prototypes=loss.dino_prototypes,
        ibot_prototypes=loss.ibot_prototypes if ibot_head is not None else None,
        centering=loss.centering,
        center_momentum=loss.center_momentum,
        sk_iterations=loss.sinkhorn_iterations,
        student_temp=loss.student_temp,
        weights=SSLLossWeights(dino=loss.dino_weight, ibot=loss.ibot_weight, koleo=loss.koleo_weight),
    )


def build_augmentation(cfg: TrainConfig, phase: Phase | None = None) -> MultiCropAugmentation:
    """The multi-crop augmentation at the crop sizes of ``phase`` (default: the base sizes)."""
    c = cfg.crops
    return MultiCropAugmentation(
        global_crops_size=phase.global_crops_size if phase is not None else c.global_crops_size,
        local_crops_size=phase.local_crops_size if phase is not None else c.local_crops_size,
        n_local_crops=c.local_crops_number,
        global_crops_scale=tuple(c.global_crops_scale),
        local_crops_scale=tuple(c.local_crops_scale),
        hflip_p=c.hflip_p,
        jitter_p=c.color_jitter_p,
        brightness=c.brightness,
        contrast=c.contrast,
        saturation=c.saturation,
        hue=c.hue,
        grayscale_p=c.grayscale_p,
        solarize_p=c.solarize_p,
        blur_mode=c.blur,
    )


def build_collate(cfg: TrainConfig) -> MultiCropCollator:
    return MultiCropCollator(
        patch_size=cfg.model.patch_size,
        mask_ratio=tuple(cfg.loss.mask_ratio),
        mask_probability=cfg.loss.mask_probability if cfg.loss.ibot_weight > 0 else 0.0,
    )

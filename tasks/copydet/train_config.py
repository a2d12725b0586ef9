"""The engine's run settings (a ``TrainConfig``) for a copy-detector run."""

from __future__ import annotations

from tasks.copydet.config import CopyDetectorConfig
from tasks.train.config import TrainConfig


def copy_train_config(c: CopyDetectorConfig) -> TrainConfig:
    """Optimiser, schedules, data and cadences of ``c`` in the engine's terms: flat LR over the layers,
    warmup then cosine, constant weight decay, no stochastic depth, no DINO/iBOT terms, no k-NN."""
    if not c.source:
        raise ValueError("copy_detector.source is empty: name the images to train on (a crawl pool or shards "
                         "stage, an image folder, or fashion-mnist)")
    return TrainConfig.model_validate(dict(
        model=dict(arch=c.arch, patch_size=c.patch_size, drop_path_rate=0.0, pack_crops=False),
        crops=dict(global_crops_size=c.image_size, local_crops_number=0),
        loss=dict(ibot_weight=0.0, koleo_weight=0.0, dino_prototypes=2, head_hidden_dim=8, head_bottleneck_dim=4),
        optim=dict(total_steps=c.steps, batch_size_per_rank=c.batch_size, base_lr=c.lr, lr_scaling="none",
                   min_lr=c.lr * 0.01, warmup_fraction=0.05, weight_decay=c.weight_decay,
                   weight_decay_end=c.weight_decay, layerwise_decay=1.0, patch_embed_lr_mult=1.0,
                   freeze_last_layer_fraction=0.0, clip_grad=3.0),
        checkpoint=dict(every_steps=min(c.checkpoint_every, c.steps), keep=2),
        eval=dict(knn_dataset="none"),
        data=dict(source=c.source, kind=c.kind, num_workers=0),
        seed=c.seed, device=c.device, cpu_threads=c.cpu_threads, precision="fp32",
    ))

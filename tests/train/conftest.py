import pytest

from tasks.datasets import fashion_mnist
from tasks.train.config import TrainConfig


def tiny_config(**over) -> TrainConfig:
    """A few-second run: vit_pico on 28 px Fashion-MNIST crops, small heads."""
    base = dict(
        model=dict(arch="vit_pico", patch_size=14, drop_path_rate=0.1, layerscale=0.0),
        crops=dict(global_crops_size=28, local_crops_size=14, local_crops_number=2, color_jitter_p=0.0),
        # the earlier recipe options (frozen prototype norms, no decay on tokens): pinned runs keep their losses
        loss=dict(dino_prototypes=64, head_hidden_dim=32, head_bottleneck_dim=16, mask_ratio=(0.25, 0.5),
                  head_train_norm=False),
        # an absolute teacher momentum (the earlier default), rather than one that follows the run's length
        optim=dict(batch_size_per_rank=8, total_steps=6, base_lr=1e-3, lr_scaling="none", decay_tokens=False,
                   momentum_teacher=0.992),
        checkpoint=dict(every_steps=2, keep=2),
        eval=dict(knn_dataset="none"),
        # the earlier data order (1,000-image chunks): pinned runs keep their batches
        data=dict(source="fashion-mnist", num_workers=0, order="shards"),
        cpu_threads=1,
    )
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainConfig.model_validate(base)


needs_fashion_mnist = pytest.mark.skipif(
    not (fashion_mnist.root_dir() / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist absent"
)

"""The cpu-tiny preset must learn on real images, not collapse (DESIGN pitfall "Collapse").

Collapse passes silently: the loss sits at ln K and k-NN stays at its random-init level. So this
trains the preset for its full few hundred steps on Fashion-MNIST and checks the numbers that
collapse cannot fake: k-NN of the teacher well above the same backbone at initialisation, the
DINO loss and the teacher's target entropy below ln K, the batch still using many prototypes,
and the normalised CLS features still spread over many directions.
"""

import math
from pathlib import Path

import pytest

from tasks.train.config import load_train_config
from tasks.train.loop import train
from tests.train.conftest import needs_fashion_mnist

PRESET = Path(__file__).resolve().parents[2] / "configs" / "cpu-tiny.yaml"


@needs_fashion_mnist
@pytest.mark.slow
def test_cpu_tiny_preset_learns_without_collapse(tmp_path):
    cfg = load_train_config(PRESET)
    summary = train(cfg, f"file://{tmp_path}/run", log=print)
    knn = summary["knn"]
    init, final = knn["0"], knn[str(cfg.optim.total_steps)]
    ln_k = math.log(cfg.loss.dino_prototypes)
    dim = 64  # vit_pico width

    # features learned: k-NN well above the randomly initialised backbone
    assert final["knn_top1_k20"] >= init["knn_top1_k20"] + 0.05
    assert final["knn_top1_k10"] >= init["knn_top1_k10"] + 0.04
    assert max(r["knn_top1_k20"] for r in knn.values()) - final["knn_top1_k20"] < 0.03
    # no collapse to uniform targets: DINO loss and teacher entropy below ln K
    assert summary["final"]["dino_loss"] < ln_k - 0.05
    assert summary["final"]["teacher_entropy"] < ln_k - 0.05
    # no collapse to one prototype: the batch-mean target still covers most prototypes
    assert summary["final"]["teacher_batch_entropy"] > 0.7 * ln_k
    # features keep their spread
    assert final["feature_effective_rank"] > 16
    assert final["feature_dim_std"] > 0.5 / math.sqrt(dim)

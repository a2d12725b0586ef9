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

from lvd.config import load_config
from tasks.train.config import TrainConfig
from tasks.train.loop import train
from tests.train.conftest import needs_fashion_mnist

PRESET = Path(__file__).resolve().parents[2] / "configs" / "cpu-tiny.yaml"


@needs_fashion_mnist
@pytest.mark.slow
def test_cpu_tiny_preset_learns_without_collapse(tmp_path):
    cfg = load_config(TrainConfig, PRESET, section="train")
    summary = train(cfg, f"file://{tmp_path}/run", log=print)
    knn = summary["knn"]
    init, final = knn["0"], knn[str(cfg.optim.total_steps)]
    ln_k = math.log(cfg.loss.dino_prototypes)
    dim = 64  # vit_pico width

    # Recorded on the 2-core CI machine (seed 0): k-NN top-1 k=10/20/100/200 59.9/58.2/53.8/50.4 at
    # init -> 62.4/62.8/62.8/61.7 after 200 steps; DINO loss 5.04 vs ln K 5.55; teacher entropy
    # 4.50; effective rank 21.3 -> 27.1. The gains move with the sample order by about the noise of
    # 1,000 queries (k=10: +2.5 points in this order, +4.3 in the per-process order used before
    # streams; seed 1 gives +4.9 / +5.0 in both; another CPU's arithmetic gave +1.9), so k=10, the
    # noisiest, is checked only through the mean gain over all four k.
    # features learned: k-NN well above the randomly initialised backbone
    ks = ("knn_top1_k10", "knn_top1_k20", "knn_top1_k100", "knn_top1_k200")
    assert sum(final[k] - init[k] for k in ks) / len(ks) >= 0.04
    assert final["knn_top1_k10"] > init["knn_top1_k10"]
    assert final["knn_top1_k20"] >= init["knn_top1_k20"] + 0.04
    assert final["knn_top1_k200"] >= init["knn_top1_k200"] + 0.07
    assert max(r["knn_top1_k20"] for r in knn.values()) - final["knn_top1_k20"] < 0.03
    # no collapse to uniform targets: DINO loss and teacher entropy clearly below ln K
    assert summary["final"]["dino_loss"] < ln_k - 0.3
    assert summary["final"]["teacher_entropy"] < ln_k - 0.5
    # no collapse to one prototype: the batch-mean target still covers the prototypes
    assert summary["final"]["teacher_batch_entropy"] > 0.9 * ln_k
    # features keep their spread
    assert final["feature_effective_rank"] > 20
    assert final["feature_dim_std"] > 0.5 / math.sqrt(dim)

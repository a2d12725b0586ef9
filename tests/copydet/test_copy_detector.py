"""The copy detector lvd trains: InfoNCE against a reference, thresholds against their precision, the
edit family against the planted one, and a short run on photos that are not the benchmark's exported as
a dedup.copy_model that carries its calibration."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tasks.copydet.calibrate import threshold_for
from tasks.copydet.config import CopyDetectorConfig
from tasks.copydet.edits import EDIT_FUNCTIONS, CopyViews
from tasks.copydet.model import info_nce
from tasks.copydet.train import train_copy_detector
from tasks.engine.objectives import CopyDetectorObjective
from tasks.dedup.config import DedupConfig
from tasks.dedup.embedder import check_embedder, load_copy_embedder, thresholds
from tasks.dedup.planted import EDIT_TYPES, OPENCV_PHOTOS

OPENCV_DOC = "/usr/share/doc/opencv-doc"
needs_opencv_doc = pytest.mark.skipif(not os.path.isdir(OPENCV_DOC), reason="opencv-doc absent")


def test_info_nce_matches_a_loop_over_rows():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(6, 8), dim=1)
    loss, stats = info_nce(z, 0.1)
    ref = []
    for i in range(6):
        partner = (i + 3) % 6
        others = [j for j in range(6) if j != i]
        logits = torch.stack([z[i] @ z[j] / 0.1 for j in others])
        ref.append(-(logits[others.index(partner)] - torch.logsumexp(logits, 0)))
    torch.testing.assert_close(loss, torch.stack(ref).mean())
    same = F.normalize(torch.randn(3, 8), dim=1).repeat(2, 1)
    assert info_nce(same, 0.05)[1]["pair_accuracy"] == 1.0
    with pytest.raises(ValueError, match="even batch"):
        info_nce(z[:5], 0.1)


def test_thresholds_meet_their_precision():
    pos, neg = np.array([0.9, 0.8, 0.7, 0.4]), np.array([0.75, 0.3, 0.2])
    t = threshold_for(pos, neg, 0.99)
    assert 0.75 < t < 0.8  # above the highest negative, as low as that allows
    # above 0.5, 3 of 4 pairs are right (0.75), but just below 0.75 only 2 of 3: precision must hold at every
    # higher threshold too, so 0.75 is met only above the negative at 0.75
    assert threshold_for(pos, neg, 0.75) == pytest.approx(0.775)
    assert threshold_for(pos, neg, 0.6) == pytest.approx(0.25)  # 4 of 6 above 0.25, never below 0.6 higher up


def test_every_planted_edit_type_has_a_training_edit():
    assert set(EDIT_TYPES) - {"exact"} <= set(EDIT_FUNCTIONS)
    img = Image.new("RGB", (300, 200), (10, 200, 40))
    views = CopyViews(28)(img, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views["global_crops"]] == [(3, 28, 28)] * 2 and views["local_crops"] == []
    again = CopyViews(28)(img, torch.Generator().manual_seed(0))
    torch.testing.assert_close(views["global_crops"][0], again["global_crops"][0])


def _training_folder(path) -> str:
    """Photos of opencv-doc other than the ones the planted benchmark pool uses."""
    os.makedirs(path, exist_ok=True)
    n = 0
    for root, _, files in sorted(os.walk(OPENCV_DOC)):
        for f in sorted(files):
            if f.lower().endswith(".jpg") and f not in OPENCV_PHOTOS and n < 120:
                with Image.open(os.path.join(root, f)) as im:
                    if min(im.size) >= 128:
                        im.convert("RGB").save(os.path.join(path, f"{n:04d}.jpg"))
                        n += 1
    return str(path)


@needs_opencv_doc
def test_a_trained_detector_is_a_copy_model_with_its_calibration(tmp_path):
    cfg = CopyDetectorConfig(source=_training_folder(tmp_path / "train"), steps=4, batch_size=4, image_size=28,
                             calibration_images=4, checkpoint_every=4, cpu_threads=2, device="cpu")
    summary = train_copy_detector(cfg, f"file://{tmp_path}/run", log=lambda m: None)
    cal = summary["calibration"]
    assert summary["steps"] == 4 and summary["descriptor_dim"] == 128
    assert cal["images"] == 4 and cal["positive_pairs"] == 4 * len(EDIT_FUNCTIONS)
    assert cal["precision"] >= 0.99 and 0 < cal["eval_threshold"] <= cal["copy_threshold"] < 1
    assert set(cal["recall_per_edit"]) == set(EDIT_FUNCTIONS) and len(cal["curve"]) == 14
    emb = load_copy_embedder(DedupConfig(copy_model=summary["detector_uri"]))
    check_embedder(emb)
    assert emb.dim == 128 and emb.size == 28 and emb.projection is not None
    assert thresholds(DedupConfig(), emb) == (cal["copy_threshold"], cal["eval_threshold"])
    assert thresholds(DedupConfig(copy_threshold=0.5), emb)[0] == 0.5
    with pytest.raises(ValueError, match="source is empty"):
        CopyDetectorObjective(CopyDetectorConfig())

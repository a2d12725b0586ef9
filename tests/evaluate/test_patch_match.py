import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tasks.evaluate.config import EvaluateConfig, EvalSetConfig
from tasks.evaluate.patch_match import (
    PairMatch, accuracy_rows, match_errors, match_picture, mutual_nearest_neighbours, plant,
)
from tasks.evaluate.run import evaluate
from tests.train.conftest import needs_fashion_mnist


def _photo(side: int = 56) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (side, side, 3), dtype=np.uint8)


def test_mutual_nearest_neighbours_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    b = torch.tensor([[0.0, 2.0], [1.0, 0.05]])
    # a0 -> b1 and b1 -> a0; a1 <-> b0; a2 -> b1 but b1's nearest is a0: not mutual
    assert mutual_nearest_neighbours(a, b).tolist() == [[0, 1], [1, 0]]
    assert mutual_nearest_neighbours(a[:0], b).shape == (0, 2)


def test_a_flipped_pair_maps_x_to_w_minus_1_minus_x():
    pair = plant(_photo(), "flip", 14)  # 4x4 patches
    assert (pair.copy[:, ::-1] == pair.original).all()
    tokens = np.arange(16)
    rows, cols = np.divmod(tokens, 4)
    mirrored = rows * 4 + (3 - cols)
    right = np.stack([mirrored, tokens], 1)  # (original token, copy token)
    assert match_errors(pair, right, (4, 4), (4, 4), 14).tolist() == [0.0] * 16
    # matching copy patch (r, c) to original (r, c) instead is off by |2c - 3| patches: 3, 1, 1, 3 per row
    same = np.stack([tokens, tokens], 1)
    assert match_errors(pair, same, (4, 4), (4, 4), 14).tolist() == [3.0, 1.0, 1.0, 3.0] * 4
    results = [PairMatch(pair, same, match_errors(pair, same, (4, 4), (4, 4), 14), (4, 4), (4, 4), (16, 16))]
    # within one patch: the 8 middle-column matches of 16
    assert accuracy_rows(results, 1.0) == {"patch_match_flip": 0.5, "patch_matches_flip": 16.0}
    assert accuracy_rows(results, 0.0)["patch_match_flip"] == 0.0
    assert Image.open(__import__("io").BytesIO(match_picture(results, 1.0))).size == (2 * 192 + 24, 192 + 24)


@pytest.mark.parametrize("edit", ["crop", "rescale"])
def test_the_map_of_an_edit_finds_a_planted_dot(edit):
    """A bright square in the original lands, through the copy's map, back where it was."""
    photo = np.zeros((112, 112, 3), dtype=np.uint8)
    photo[60:66, 40:46] = 255
    pair = plant(photo, edit, 14)
    assert pair.copy.shape[0] % 14 == 0
    ys, xs = np.nonzero(pair.copy[..., 0] > 128)
    x, y = pair.to_original(xs.mean() + 0.5, ys.mean() + 0.5)
    assert abs(x - 43) < 1.0 and abs(y - 63) < 1.0, (x, y)


def test_bad_photo_or_edit_is_refused():
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        plant(_photo(50), "flip", 14)
    with pytest.raises(ValueError, match="unknown patch-matching edit 'rotate'"):
        plant(_photo(), "rotate", 14)
    with pytest.raises(ValueError, match="patch_match.image_size 50 is not a multiple"):
        evaluate(EvaluateConfig(baselines=["random:vit_pico"], patch_match=dict(image_size=50)), "file:///nowhere",
                 log=lambda m: None)


@needs_fashion_mnist
def test_evaluate_reports_patch_matching_with_its_picture(tmp_path):
    cfg = EvaluateConfig(
        baselines=["random:vit_pico", "pixels"],
        datasets=[EvalSetConfig(train_size=20, test_size=10)],
        image_size=28, knn=dict(ks=(5,)), linear=dict(enabled=False), pca=dict(enabled=False),
        patch_match=dict(edits=("identity", "flip", "rescale"), n_images=2, image_size=112), device="cpu",
    )
    summary = evaluate(cfg, f"file://{tmp_path}/eval", log=lambda m: None)
    row = {r["model"]: r for r in summary["table"]}["random:vit_pico@0"]
    # an untrained but deterministic model matches every kept patch of an identical copy to itself
    assert row["patch-pairs/patch_match_identity"] == 1.0 and row["patch-pairs/patch_matches_identity"] >= 1
    for edit in ("flip", "rescale"):
        assert 0.0 <= row[f"patch-pairs/patch_match_{edit}"] <= 1.0
    assert "patch-pairs/patch_match_flip" not in {r["model"]: r for r in summary["table"]}["pixels:32"]
    rows = pq.read_table(tmp_path / "eval" / "results.parquet").to_pylist()
    assert json.loads(next(r for r in rows if r["metric"] == "patch_match_flip")["detail"]) == {"photos": 2, "radius": 1}
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "![random:vit_pico@0 matches](matches-random-vit_pico-0.png)" in report
    png = Image.open(tmp_path / "eval" / "matches-random-vit_pico-0.png")
    assert png.size == (2 * 192 + 24, 3 * (192 + 20) + 4)
    assert list(summary["match_pictures"]) == ["random:vit_pico@0"]

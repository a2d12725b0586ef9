import math

import numpy as np
import pytest
import torch

from tasks.evaluate.copy_detection import copy_detection_metrics, micro_average_precision, recall_at_precision
from tasks.evaluate.linear import feature_variants, linear_probe, train_probe_grids
from tasks.evaluate.pca import foreground_and_rgb

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def test_micro_ap_matches_sklearn_with_ties_and_missed_pairs():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(300), 2)  # rounding makes ties
    is_match = rng.random(300) < 0.3
    ref = sklearn_metrics.average_precision_score(is_match, scores)
    assert micro_average_precision(scores, is_match, int(is_match.sum())) == pytest.approx(ref, abs=1e-12)
    # true pairs that were never predicted scale every recall down
    assert micro_average_precision(scores, is_match, 2 * int(is_match.sum())) == pytest.approx(ref / 2, abs=1e-12)


def test_recall_at_precision_against_a_naive_scan():
    rng = np.random.default_rng(1)
    scores = rng.random(200)
    is_match = rng.random(200) < np.clip(scores, 0.05, 0.97)  # better scores, more matches
    n_gt = int(is_match.sum()) + 5
    best = 0.0
    for t in np.unique(scores):
        keep = scores >= t
        if is_match[keep].mean() >= 0.9:
            best = max(best, is_match[keep].sum() / n_gt)
    assert recall_at_precision(scores, is_match, n_gt, 0.9) == pytest.approx(best)
    assert recall_at_precision(np.array([0.9, 0.8]), np.array([False, True]), 1, 0.9) == 0.0


def test_copy_metrics_from_features():
    refs = torch.eye(4)
    queries = torch.nn.functional.normalize(torch.eye(4)[[0, 1, 2]] + 0.1 * torch.ones(3, 4), dim=1)
    perfect = copy_detection_metrics(refs, queries, {0: 0, 1: 1, 2: 2}, k=2)
    assert perfect == {"copy_micro_ap": 1.0, "copy_recall_at_p90": 1.0}
    swapped = copy_detection_metrics(refs, queries, {0: 1, 1: 0, 2: 2}, k=1)
    # three tied predictions, one right: precision 1/3 at recall 1/3
    assert swapped == pytest.approx({"copy_micro_ap": 1 / 9, "copy_recall_at_p90": 0.0})


def _plain_sgd_head(x, y, num_classes, lr, epochs, batch_size, w0, seed_order):
    """Reference: nn.Linear + torch.optim.SGD(momentum 0.9) + cosine LR, same batches."""
    head = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(w0.T)
        head.bias.zero_()
    scaled = lr * batch_size / 256
    opt = torch.optim.SGD(head.parameters(), lr=scaled, momentum=0.9)
    total = epochs * math.ceil(len(y) / batch_size)
    step = 0
    for order in seed_order:
        for s in range(0, len(y), batch_size):
            idx = order[s : s + batch_size]
            for g in opt.param_groups:
                g["lr"] = scaled * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
    return head


def test_batched_grid_equals_one_plain_sgd_loop_per_learning_rate():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(70, 6, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    lrs, epochs, bs = (0.05, 0.5), 3, 16
    grids = train_probe_grids({"f": x}, y, 3, lrs, epochs, bs, seed=7)
    # replay the grid's random draws: initial weights, then one permutation per epoch
    g = torch.Generator().manual_seed(7)
    w0 = torch.empty(len(lrs), 6, 3).normal_(0.0, 0.01, generator=g)
    orders = [torch.randperm(70, generator=g) for _ in range(epochs)]
    for i, lr in enumerate(lrs):
        head = _plain_sgd_head(x, y, 3, lr, epochs, bs, w0[i], orders)
        torch.testing.assert_close(grids["f"].weight[i], head.weight.detach().T, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(grids["f"].bias[i], head.bias.detach(), atol=1e-5, rtol=1e-4)


def test_linear_probe_separates_a_separable_problem_and_picks_on_heldout():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=gen) * 4
    y = torch.arange(400) % 4
    x = centres[y] + torch.randn(400, 8, generator=gen)
    noise = torch.randn(400, 8, generator=gen)  # an uninformative variant must lose
    result = linear_probe({"good": x[:300], "noise": noise[:300]}, y[:300], {"good": x[300:], "noise": noise[300:]},
                          y[300:], 4, lrs=(1e-3, 1e-1), epochs=5, batch_size=32)
    assert result["linear_variant"] == "good" and result["linear_top1"] > 0.97
    assert len(result["grid"]) == 4


def test_feature_variants_shapes():
    cls = torch.randn(5, 4, 8)
    v = feature_variants(cls, torch.randn(5, 8))
    assert {k: t.shape[1] for k, t in v.items()} == {"cls1": 8, "cls4": 32, "cls1+avgpool": 16, "cls4+avgpool": 40}
    assert set(feature_variants(cls[:, -2:], None)) == {"cls1"}


def test_pca_finds_the_foreground_and_colours_it_by_its_principal_components():
    gen = torch.Generator().manual_seed(0)
    h = w = 8
    fg_true = torch.zeros(2, h, w, dtype=torch.bool)
    fg_true[:, 2:6, 2:6] = True
    d = 16
    parts = torch.randn(3, d, generator=gen)
    coeff = torch.rand(2, h, w, 3, generator=gen)
    feats = torch.randn(2, h, w, d, generator=gen) * 0.05
    feats += torch.where(fg_true[..., None], 10.0, -10.0) * torch.eye(d)[0]  # fg/bg split on axis 0
    feats += torch.where(fg_true[..., None], coeff @ parts, torch.zeros(d))
    fg, rgb = foreground_and_rgb(feats.reshape(2, h * w, d), (h, w))
    assert torch.equal(fg, fg_true)
    assert (rgb[~fg_true] == 0).all() and rgb[fg_true].min() >= 0 and rgb[fg_true].max() <= 1
    # each colour channel is a foreground principal component: compare with numpy's SVD, up to sign and scale
    rows = feats[fg_true].double().numpy()
    rows = rows - rows.mean(0)
    _, _, vt = np.linalg.svd(rows, full_matrices=False)
    for c in range(3):
        corr = np.corrcoef(rgb[fg_true][:, c].numpy(), rows @ vt[c])[0, 1]
        assert abs(corr) > 0.999

import math

import numpy as np
import torch
import torch.nn.functional as F

from tasks.evaluate.knn import feature_spread, knn_accuracy, knn_predict


def _naive_knn(train_f, train_y, test_f, k, temperature, n_classes):
    preds = []
    for q in test_f.tolist():
        sims = [sum(a * b for a, b in zip(q, t)) for t in train_f.tolist()]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * n_classes
        for i in order:
            votes[int(train_y[i])] += math.exp(sims[i] / temperature)
        preds.append(max(range(n_classes), key=lambda c: (votes[c], -c)))
    return torch.tensor(preds)


def test_matches_naive_loop_for_every_k():
    g = torch.Generator().manual_seed(0)
    train_f = F.normalize(torch.randn(300, 8, generator=g, dtype=torch.float64), dim=1)
    train_y = torch.randint(0, 5, (300,), generator=g)
    test_f = F.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    ks = (1, 10, 20, 100, 200)
    preds = knn_predict(train_f, train_y, test_f, ks=ks, temperature=0.07, num_classes=5, chunk_size=7)
    for k in ks:
        ref = _naive_knn(train_f, train_y, test_f, k, 0.07, 5)
        assert torch.equal(preds[k], ref), k


def test_temperature_changes_votes_and_accuracy_is_fraction():
    # one query; 3 near neighbours of class 0 at sim 0.9, 5 farther of class 1 at sim 0.8
    q = torch.tensor([[1.0, 0.0]])
    near = torch.tensor([[0.9, math.sqrt(1 - 0.81)]]).repeat(3, 1)
    far = torch.tensor([[0.8, 0.6]]).repeat(5, 1)
    train_f = torch.cat([near, far])
    train_y = torch.tensor([0] * 3 + [1] * 5)
    sharp = knn_predict(train_f, train_y, q, ks=(8,), temperature=0.07)[8]
    flat = knn_predict(train_f, train_y, q, ks=(8,), temperature=10.0)[8]
    assert sharp.item() == 0 and flat.item() == 1
    acc = knn_accuracy(train_f, train_y, torch.cat([q, q]), torch.tensor([0, 1]), ks=(8,), temperature=0.07)
    assert acc == {8: 0.5}


def test_k_larger_than_train_set_uses_all():
    train_f = F.normalize(torch.randn(5, 3), dim=1)
    preds = knn_predict(train_f, torch.tensor([0, 1, 1, 1, 1]), train_f[:1], ks=(200,), temperature=100.0)
    assert preds[200].item() == 1


def test_feature_spread_detects_collapse():
    g = torch.Generator().manual_seed(1)
    spread = F.normalize(torch.randn(500, 32, generator=g), dim=1)
    collapsed = F.normalize(torch.ones(500, 32) + 1e-3 * torch.randn(500, 32, generator=g), dim=1)
    s, c = feature_spread(spread), feature_spread(collapsed)
    assert s["feature_effective_rank"] > 25 and s["feature_dim_std"] > 0.15
    assert c["feature_dim_std"] < 1e-3
    assert np.isfinite(c["feature_effective_rank"])

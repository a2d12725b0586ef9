"""Stochastic depth: subset (efficient) and per-sample modes are unbiased; eval is deterministic."""

import pytest
import torch

from models.drop_path import add_residual, drop_path_rates
from models.packing import Packing
from models.presets import build_vit


def _setup():
    torch.manual_seed(0)
    packing = Packing(((4, 3), (6, 2)))  # e.g. 4 global crops of 3 tokens, 6 local crops of 2
    x = torch.randn(packing.num_tokens, 5, dtype=torch.float64)
    weight = torch.randn(5, 5, dtype=torch.float64)

    def branch(t, p):
        # Token-wise plus a per-sequence mean, so the branch really depends on the packing.
        per_seq = torch.cat([g.mean(dim=1, keepdim=True).expand_as(g).reshape(-1, t.shape[1]) for g in p.unpack(t)])
        return torch.tanh(t @ weight) + per_seq

    return packing, x, branch


@pytest.mark.parametrize("mode", ["subset", "per_sample"])
def test_stochastic_depth_is_unbiased(mode):
    packing, x, branch = _setup()
    full = x + branch(x, packing)
    rate, draws = 0.5, 4000
    samples = torch.stack([add_residual(x, packing, branch, rate, mode, training=True) for _ in range(draws)])
    mean = samples.mean(0)
    # Each crop's update is (Bernoulli(q) / q) * branch, q = kept fraction; compare within 5 standard errors.
    stderr = samples.std(0) / draws**0.5
    err = (mean - full).abs()
    assert torch.all(err <= 5 * stderr + 1e-12), (err / (stderr + 1e-12)).max()
    # The draws really vary: some crops dropped, some kept.
    assert samples.std(0).max() > 0.1


def test_subset_runs_branch_on_kept_crops_only():
    packing, x, branch = _setup()
    seen = []

    def spy(t, p):
        seen.append(p)
        return branch(t, p)

    out = add_residual(x, packing, spy, rate=0.4, mode="subset", training=True)
    assert seen == [Packing(((2, 3), (3, 2)))]  # int(4 * 0.6) = 2, int(6 * 0.6) = 3
    # Every crop is either untouched or gets exactly B/kept times the full-batch branch update.
    full_update = branch(x, packing)
    changed = 0
    groups = zip(packing.unpack(out), packing.unpack(x), packing.unpack(full_update), [(4, 2), (6, 3)])
    for out_g, x_g, upd_g, (b, kept) in groups:
        for i in range(b):
            if torch.equal(out_g[i], x_g[i]):
                continue
            torch.testing.assert_close(out_g[i], x_g[i] + b / kept * upd_g[i])
            changed += 1
    assert changed == 5


def test_drop_path_rates_and_validation():
    assert drop_path_rates(0.4, 3, uniform=True) == [0.4, 0.4, 0.4]
    assert drop_path_rates(0.4, 3, uniform=False) == pytest.approx([0.0, 0.2, 0.4])
    with pytest.raises(ValueError):
        drop_path_rates(1.0, 3, uniform=True)
    packing, x, branch = _setup()
    with pytest.raises(ValueError):
        add_residual(x, packing, branch, 0.2, mode="bogus", training=True)


@pytest.mark.parametrize("mode", ["subset", "per_sample"])
def test_model_eval_is_deterministic_and_train_is_not(mode):
    torch.manual_seed(0)
    model = build_vit("vit_pico", img_size=56, drop_path_rate=0.5, drop_path_mode=mode, init_values=0.5)
    crops = [torch.randn(4, 3, 56, 56), torch.randn(8, 3, 28, 28)]
    model.eval()
    a = model.forward_features(crops)
    b = model.forward_features(crops)
    reference = build_vit("vit_pico", img_size=56, drop_path_rate=0.0, init_values=0.5)
    reference.load_state_dict(model.state_dict())
    c = reference.train().forward_features(crops)
    for oa, ob, oc in zip(a, b, c):
        assert torch.equal(oa["x_prenorm"], ob["x_prenorm"])
        torch.testing.assert_close(oa["x_prenorm"], oc["x_prenorm"])
    model.train()
    d = model.forward_features(crops)
    e = model.forward_features(crops)
    assert not torch.allclose(d[0]["x_prenorm"], e[0]["x_prenorm"])
    (d[0]["x_norm_clstoken"].sum() + d[1]["x_norm_clstoken"].sum()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("blocks."))

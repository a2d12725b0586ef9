import copy

import torch
import torch.nn.functional as F

from models.heads import DINOHead


def _reference(head: DINOHead, x: torch.Tensor) -> torch.Tensor:
    """The head written out by hand: MLP, L2 normalisation, cosine against unit prototypes."""
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    h = x
    for k, lin in enumerate(linears):
        h = h @ lin.weight.t() + lin.bias
        if k < len(linears) - 1:
            h = 0.5 * h * (1.0 + torch.erf(h / 2**0.5))
    h = h / h.norm(dim=-1, keepdim=True)
    v = head.last_layer.parametrizations.weight.original1
    protos = v / v.norm(dim=1, keepdim=True)
    return h @ protos.t()


def test_head_matches_plain_reference_and_shapes():
    torch.manual_seed(0)
    head = DINOHead(in_dim=12, out_dim=50, hidden_dim=16, bottleneck_dim=8)
    x = torch.randn(5, 12)
    out = head(x)
    assert out.shape == (5, 50)
    torch.testing.assert_close(out, _reference(head, x), rtol=1e-5, atol=1e-6)
    assert out.abs().max() <= 1.0 + 1e-5  # cosine similarities
    assert len([m for m in head.mlp if isinstance(m, torch.nn.Linear)]) == 3


def test_head_defaults_and_layer_counts():
    head = DINOHead(in_dim=4, hidden_dim=8)
    assert head.last_layer.weight.shape == (65536, 256)
    for n in (1, 2, 4):
        h = DINOHead(in_dim=4, out_dim=6, hidden_dim=8, bottleneck_dim=3, nlayers=n)
        assert len([m for m in h.mlp if isinstance(m, torch.nn.Linear)]) == n
        assert h(torch.randn(2, 4)).shape == (2, 6)


def test_prototypes_start_as_unit_vectors_and_g_trains_as_in_the_official_head():
    torch.manual_seed(1)
    head = DINOHead(in_dim=6, out_dim=10, hidden_dim=8, bottleneck_dim=4)
    g = head.last_layer.parametrizations.weight.original0
    assert g.requires_grad and torch.all(g == 1.0)
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(10))
    head(torch.randn(3, 6)).square().sum().backward()
    assert g.grad is not None and g.grad.abs().sum() > 0


def test_frozen_norm_keeps_prototypes_unit_vectors():
    torch.manual_seed(1)
    head = DINOHead(in_dim=6, out_dim=10, hidden_dim=8, bottleneck_dim=4, train_norm=False)
    g = head.last_layer.parametrizations.weight.original0
    v = head.last_layer.parametrizations.weight.original1
    assert not g.requires_grad and torch.all(g == 1.0)
    head(torch.randn(3, 6)).square().sum().backward()
    assert g.grad is None and v.grad is not None and v.grad.abs().sum() > 0
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert "last_layer.parametrizations.weight.original1" in trainable
    assert "last_layer.parametrizations.weight.original0" not in trainable


def test_deepcopy_gives_an_independent_equal_head():
    torch.manual_seed(2)
    head = DINOHead(in_dim=6, out_dim=10, hidden_dim=8, bottleneck_dim=4)
    twin = copy.deepcopy(head)
    x = torch.randn(3, 6)
    torch.testing.assert_close(twin(x), head(x))
    with torch.no_grad():
        head.last_layer.parametrizations.weight.original1.mul_(-1.0)
    torch.testing.assert_close(twin(x), -head(x))
    fresh = DINOHead(in_dim=6, out_dim=10, hidden_dim=8, bottleneck_dim=4)
    fresh.load_state_dict(head.state_dict())
    torch.testing.assert_close(fresh(x), head(x))


def test_head_under_bf16_autocast_is_finite():
    torch.manual_seed(3)
    head = DINOHead(in_dim=6, out_dim=10, hidden_dim=8, bottleneck_dim=4)
    x = torch.randn(3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), head(x), atol=3e-2, rtol=0)
    assert F.cosine_similarity(out.float().flatten(), head(x).flatten(), dim=0) > 0.99

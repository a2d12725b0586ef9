import math

import pytest
import torch

from models.collate import MultiCropCollator
from models.heads import DINOHead
from models.presets import build_vit
from models.ssl import SSLLossWeights, SSLMetaArch


def _arch(separate=False, centering="softmax", k=32, **kw):
    torch.manual_seed(0)
    backbone = build_vit("vit_pico", patch_size=7, img_size=28, init_values=None, drop_path_rate=0.0)
    head = DINOHead(64, k, 32, 16)
    ibot = DINOHead(64, 16, 32, 16) if separate else None
    return SSLMetaArch(backbone, head, ibot, dino_prototypes=k, ibot_prototypes=16 if separate else None,
                       centering=centering, **kw)


def _batch(b=4, n_local=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    samples = [{"global_crops": [torch.randn(3, 28, 28, generator=g) for _ in range(2)],
                "local_crops": [torch.randn(3, 14, 14, generator=g) for _ in range(n_local)]} for _ in range(b)]
    return MultiCropCollator(patch_size=7, mask_probability=0.5)(samples, g)


def test_teacher_is_a_frozen_copy_and_stays_in_eval_mode():
    m = _arch().train()
    for (n, s), t in zip(m.student.named_parameters(), m.teacher.parameters()):
        assert torch.equal(s, t) and s is not t and not t.requires_grad, n
    assert m.student.training and not m.teacher.training


def test_ema_update_moves_teacher_towards_student():
    m = _arch()
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(1.0)
    before = [t.clone() for t in m.teacher.parameters()]
    m.update_teacher(0.75)
    for b, t, s in zip(before, m.teacher.parameters(), m.student.parameters()):
        assert torch.allclose(t, 0.75 * b + 0.25 * s)


@pytest.mark.parametrize("separate,centering", [(False, "softmax"), (True, "sinkhorn_knopp")])
def test_losses_backprop_into_student_only(separate, centering):
    m = _arch(separate, centering).train()
    out = m.forward_losses(_batch(), teacher_temp=0.04)
    assert {"dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy", "total"} <= set(out)
    w = m.weights
    assert out["total"].item() == pytest.approx(
        w.dino * out["dino_loss"].item() + w.ibot * out["ibot_loss"].item() + w.koleo * out["koleo_loss"].item(), rel=1e-5)
    out["total"].backward()
    assert all(p.grad is not None for n, p in m.student.named_parameters() if p.requires_grad and "mask_token" not in n)
    assert all(p.grad is None for p in m.teacher.parameters())
    if separate:
        assert m.student["ibot_head"].mlp[0].weight.grad.abs().sum() > 0


def test_flat_teacher_gives_uniform_targets_and_loss_at_least_ln_k():
    # a very hot teacher gives uniform targets; CE against them is ln K + KL(uniform || student)
    m = _arch(k=128, weights=SSLLossWeights(ibot=0.0, koleo=0.0))
    out = m.forward_losses(_batch(), teacher_temp=100.0)
    assert out["dino_loss"].item() >= math.log(128) - 1e-4
    assert out["teacher_entropy"].item() == pytest.approx(math.log(128), rel=1e-3)
    assert "ibot_loss" not in out and "koleo_loss" not in out


def test_softmax_center_is_updated_from_teacher_outputs():
    m = _arch()
    assert torch.count_nonzero(m.dino_targets.softmax.center) == 0
    m.forward_losses(_batch(), teacher_temp=0.04)
    assert torch.count_nonzero(m.dino_targets.softmax.center) > 0

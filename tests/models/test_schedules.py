import math

import pytest
import torch
from torch import nn

from models.heads import DINOHead
from models.schedules import (
    apply_step,
    build_param_groups,
    build_schedules,
    cosine_schedule,
    layer_id,
    momentum_for_lag,
    scale_lr,
)


def _reference_schedule(total, base, final, warmup, start, hold):
    n_warm, n_hold = round(warmup * total), round(hold * total)
    n_cos = total - n_warm - n_hold
    values = []
    for i in range(n_warm):
        values.append(start + (base - start) * i / n_warm)
    for i in range(n_cos):
        values.append(final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n_cos)))
    values += [final] * n_hold
    return values


@pytest.mark.parametrize(
    "total,warmup,hold", [(100, 0.1, 0.0), (37, 0.2, 0.3), (10, 0.0, 0.0), (50, 1.0, 0.0), (0, 0.1, 0.0)]
)
def test_cosine_schedule_matches_reference(total, warmup, hold):
    got = cosine_schedule(total, 1.0, 0.1, warmup=warmup, start=0.3, hold=hold)
    assert got.tolist() == pytest.approx(_reference_schedule(total, 1.0, 0.1, warmup, 0.3, hold), abs=1e-12)


def test_schedules_scale_with_the_run_length():
    short, long = build_schedules(200, lr=1e-3), build_schedules(20_000, lr=1e-3)
    for frac in (0.05, 0.1, 0.3, 0.5, 0.9):
        a, b = short.at(int(frac * 200)), long.at(int(frac * 20_000))
        for key in ("lr", "weight_decay", "momentum", "teacher_temp"):
            assert a[key] == pytest.approx(b[key], rel=0.05), (key, frac)


def test_momentum_for_lag_keeps_the_time_constant_a_share_of_the_run():
    assert momentum_for_lag(125_000, 0.001, 0.9) == pytest.approx(0.992)  # 125-step time constant
    assert momentum_for_lag(625_000, 1 / 3750, 0.9) == pytest.approx(0.994)  # ViT-g's 0.994 over 625k steps
    assert momentum_for_lag(40_000, 0.001, 0.9) == pytest.approx(1 - 1 / 40)
    assert momentum_for_lag(200, 0.001, 0.9) == momentum_for_lag(1, 0.001, 0.9) == 0.9  # floor: >= 10 steps
    values = [momentum_for_lag(t, 0.001, 0.9) for t in (10, 10_000, 20_000, 10**6)]
    assert values == sorted(values) and values[1] == 0.9 and values[2] == pytest.approx(0.95)
    with pytest.raises(ValueError):
        momentum_for_lag(0, 0.001, 0.9)


def test_build_schedules_recipe_values():
    total = 1000
    s = build_schedules(total, lr=4e-3, teacher_temp_warmup=0.3, freeze_last_layer=0.01, lr_warmup=0.1)
    assert s.at(0)["lr"] == 0.0 and s.at(100)["lr"] == pytest.approx(4e-3)
    assert s.at(total - 1)["lr"] == pytest.approx(1e-6, abs=1e-7)
    assert s.at(99)["lr"] < s.at(100)["lr"] > s.at(500)["lr"]
    # Last layer frozen for the first 1% of the run, then the plain LR.
    assert all(v == 0.0 for v in s.last_layer_lr[:10].tolist())
    assert torch.equal(s.last_layer_lr[10:], s.lr[10:])
    # EMA momentum 0.992 -> 1 by a cosine, monotone.
    assert s.at(0)["momentum"] == pytest.approx(0.992)
    assert s.at(total - 1)["momentum"] == pytest.approx(1.0, abs=1e-7)
    assert bool((s.momentum[1:] >= s.momentum[:-1]).all())
    assert s.at(500)["momentum"] == pytest.approx(0.996)
    # Weight decay 0.04 -> 0.4.
    assert s.at(0)["weight_decay"] == pytest.approx(0.04)
    assert s.at(500)["weight_decay"] == pytest.approx(0.22)
    assert s.at(total - 1)["weight_decay"] == pytest.approx(0.4, abs=1e-5)
    # Teacher temperature: linear 0.04 -> 0.07 over 30% of the run, then constant.
    assert s.at(0)["teacher_temp"] == pytest.approx(0.04)
    assert s.at(150)["teacher_temp"] == pytest.approx(0.055)
    assert all(v == pytest.approx(0.07) for v in s.teacher_temp[300:].tolist())
    assert s.at(10**9) == s.at(total - 1)


def test_hold_keeps_final_values():
    s = build_schedules(100, lr=1.0, min_lr=0.01, hold=0.2)
    assert s.lr[80:].tolist() == [0.01] * 20
    assert s.momentum[80:].tolist() == [1.0] * 20
    assert s.lr[79] > 0.01


def test_scale_lr_square_root_rule():
    assert scale_lr(4e-3, 2048) == pytest.approx(4e-3 * math.sqrt(2))
    assert scale_lr(2e-4, 3072) == pytest.approx(3.4641e-4, rel=1e-4)
    assert scale_lr(1e-3, 1024) == pytest.approx(1e-3)


class _TinyBackbone(nn.Module):
    """Parameter names as in the ViT backbone."""

    def __init__(self, dim=4, depth=3):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, 2, 2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, 2, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.norm1 = nn.LayerNorm(dim)
            block.attn = nn.Module()
            block.attn.qkv = nn.Linear(dim, 3 * dim)
            block.ls1 = nn.Module()
            block.ls1.gamma = nn.Parameter(torch.ones(dim))
            self.blocks.append(block)
        self.norm = nn.LayerNorm(dim)


def _expected(name, param, depth, decay, pe_mult):
    """Plain restatement of the grouping rules for one parameter."""
    if "patch_embed" in name or name.split(".")[1] in ("cls_token", "pos_embed", "register_tokens", "mask_token"):
        lid = 0
    elif ".blocks." in name:
        lid = int(name.split(".")[2]) + 1
    else:
        lid = depth + 1
    lr_mult = decay ** (depth + 1 - lid) * (pe_mult if "patch_embed" in name else 1.0)
    is_token = name.split(".")[-1] in ("cls_token", "pos_embed", "register_tokens", "mask_token")
    wd = 0.0 if name.endswith("bias") or "norm" in name or "gamma" in name or is_token else 1.0
    return lr_mult, wd, "last_layer" in name


def test_param_groups_match_rules():
    torch.manual_seed(0)
    student = nn.ModuleDict({"backbone": _TinyBackbone(), "dino_head": DINOHead(4, 6, 8, 3)})
    groups = build_param_groups(student, layer_decay=0.9, patch_embed_lr_mult=0.2)
    seen = {}
    for g in groups:
        for name, p in zip(g["param_names"], g["params"]):
            seen[name] = (g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"])
    named = dict(student.named_parameters())
    assert set(seen) == {n for n, p in named.items() if p.requires_grad}
    # the trained prototype norms decay and freeze with the prototypes, as the official weight_g
    assert seen["dino_head.last_layer.parametrizations.weight.original0"] == (1.0, 1.0, True)
    frozen = nn.ModuleDict({"dino_head": DINOHead(4, 6, 8, 3, train_norm=False)})
    names = {n for g in build_param_groups(frozen) for n in g["param_names"]}
    assert "dino_head.last_layer.parametrizations.weight.original0" not in names
    for name, got in seen.items():
        exp = _expected(name, named[name], 3, 0.9, 0.2)
        assert got[0] == pytest.approx(exp[0]) and got[1:] == exp[1:], name
    assert seen["backbone.blocks.0.attn.qkv.weight"][0] == pytest.approx(0.9**3)
    assert seen["backbone.patch_embed.proj.weight"][0] == pytest.approx(0.2 * 0.9**4)
    assert seen["dino_head.last_layer.parametrizations.weight.original1"] == (1.0, 1.0, True)
    keys = [(g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in groups]
    assert len(keys) == len(set(keys))  # fused


def test_layer_id_handles_chunked_names_and_official_token_decay():
    assert layer_id("backbone.blocks.1.5.attn.qkv.weight", 12) == 6
    assert layer_id("blocks.7.mlp.fc1.weight", 12) == 8
    assert layer_id("backbone.norm.weight", 12) == 13
    assert layer_id("backbone.register_tokens", 12) == 0
    groups = build_param_groups(_TinyBackbone(), decay_tokens=True, layer_decay=1.0, patch_embed_lr_mult=1.0)
    wd = {n: g["wd_multiplier"] for g in groups for n in g["param_names"]}
    assert wd["cls_token"] == 1.0 and wd["pos_embed"] == 1.0 and wd["blocks.0.norm1.weight"] == 0.0
    assert {g["lr_multiplier"] for g in groups} == {1.0}


def test_apply_step_drives_adamw_and_freezes_the_last_layer():
    torch.manual_seed(1)
    student = nn.ModuleDict({"backbone": _TinyBackbone(), "dino_head": DINOHead(4, 6, 8, 3)})
    opt = torch.optim.AdamW(build_param_groups(student), lr=0.0)
    apply_step(opt, lr=0.1, weight_decay=0.04, last_layer_lr=0.0)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.0 if g["is_last_layer"] else 0.1 * g["lr_multiplier"])
        assert g["weight_decay"] == pytest.approx(0.04 * g["wd_multiplier"])
    protos = student["dino_head"].last_layer.parametrizations.weight.original1
    before = protos.detach().clone()
    qkv_before = student["backbone"].blocks[2].attn.qkv.weight.detach().clone()
    x = torch.randn(3, 4)
    student["dino_head"](student["backbone"].blocks[2].attn.qkv(x)[:, :4]).sum().backward()
    opt.step()
    assert torch.equal(protos.detach(), before)
    assert not torch.equal(student["backbone"].blocks[2].attn.qkv.weight.detach(), qkv_before)

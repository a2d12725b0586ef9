"""ViT backbone: preset shapes, positional embeddings, registers, mask token, intermediate layers."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.mlp import SwiGLU, swiglu_hidden_features
from models.presets import PRESETS, build_vit


def pico(**kw):
    torch.manual_seed(0)
    return build_vit("vit_pico", **kw).eval()


@pytest.mark.parametrize(
    "name, dim, depth, params_m",
    [
        ("vit_small", 384, 12, 21.6),
        ("vit_base", 768, 12, 85.7),
        ("vit_large", 1024, 24, 303.2),
        ("vit_giant2", 1536, 40, 1134.8),
    ],
)
def test_official_presets_on_meta(name, dim, depth, params_m):
    # Built on the meta device: shapes and parameter counts without allocating 1.1B floats.
    with torch.device("meta"):
        model = build_vit(name)
        outs = model.forward_features([torch.empty(2, 3, 224, 224), torch.empty(8, 3, 98, 98)])
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params / 1e6 == pytest.approx(params_m, abs=0.1)
    assert len(model.blocks) == depth and model.embed_dim == dim
    assert outs[0]["x_norm_clstoken"].shape == (2, dim)
    assert outs[0]["x_norm_patchtokens"].shape == (2, 16 * 16, dim)
    assert outs[1]["x_norm_patchtokens"].shape == (8, 7 * 7, dim)


def test_giant_uses_swiglu_with_official_hidden_rounding():
    with torch.device("meta"):
        model = build_vit("vitg14")
    mlp = model.blocks[0].mlp
    assert isinstance(mlp, SwiGLU)
    assert mlp.hidden_features == 4096 and mlp.w12.weight.shape == (8192, 1536)
    assert model.blocks[0].attn.head_dim == 64 and model.blocks[0].attn.num_heads == 24
    assert all(b.drop_path == 0.4 for b in model.blocks)  # uniform rate across depth
    assert swiglu_hidden_features(4 * 384) == 1024 and swiglu_hidden_features(100) == 72


def test_tiny_presets_forward_shapes():
    assert PRESETS["vit_tiny"]["embed_dim"] == 192 and PRESETS["vit_tiny"]["depth"] == 12
    model = pico(num_register_tokens=3)
    out = model.forward_features(torch.randn(2, 3, 42, 28))
    assert out["x_norm_clstoken"].shape == (2, 64)
    assert out["x_norm_regtokens"].shape == (2, 3, 64)
    assert out["x_norm_patchtokens"].shape == (2, 3 * 2, 64)
    assert out["x_prenorm"].shape == (2, 1 + 3 + 6, 64)
    assert out["masks"] is None
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 64)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.forward_features(torch.randn(1, 3, 30, 28))
    with pytest.raises(TypeError):
        model.forward_features([torch.randn(2, 3, 28, 28)], masks=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="2 image batches but 1 masks"):
        model.forward_features([torch.randn(2, 3, 28, 28)] * 2, masks=[None])


def test_drop_path_ramp_and_uniform():
    ramp = build_vit("vit_pico", drop_path_rate=0.3, drop_path_uniform=False)
    assert [b.drop_path for b in ramp.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    flat = build_vit("vit_pico", drop_path_rate=0.3)
    assert [b.drop_path for b in flat.blocks] == [0.3] * 4


def test_pos_embed_native_size_is_noop():
    model = pico(img_size=56)  # native 4x4 grid
    assert model.interpolate_pos_encoding(4, 4) is model.pos_embed
    for antialias in (True, False):
        model.interpolate_antialias = antialias
        forced = model.interpolate_pos_encoding(4, 4, force=True)
        torch.testing.assert_close(forced, model.pos_embed, atol=1e-6, rtol=0)


def test_pos_embed_interpolation_matches_bicubic_reference():
    model = pico(img_size=56)
    gh, gw = 2, 6
    out = model.interpolate_pos_encoding(gh, gw)
    grid = model.pos_embed[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=True)
    ref = ref.permute(0, 2, 3, 1).reshape(1, gh * gw, 64)
    torch.testing.assert_close(out[:, 1:], ref)
    torch.testing.assert_close(out[:, :1], model.pos_embed[:, :1])
    # Legacy rule of the first releases: scale factor (target + 0.1) / native.
    model.interpolate_offset, model.interpolate_antialias = 0.1, False
    legacy = model.interpolate_pos_encoding(7, 7)
    ref = F.interpolate(grid, scale_factor=(7.1 / 4, 7.1 / 4), mode="bicubic")
    torch.testing.assert_close(legacy[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 49, 64))


def test_registers_get_no_pos_embed_and_sit_after_cls():
    model = pico(num_register_tokens=2)
    with torch.no_grad():
        model.register_tokens.normal_()
    images = torch.randn(3, 3, 28, 28)
    tokens = model.prepare_tokens_with_masks(images)
    assert tokens.shape == (3, 1 + 2 + 4, 64)
    torch.testing.assert_close(tokens[:, 1:3], model.register_tokens.expand(3, -1, -1))
    pos = model.interpolate_pos_encoding(2, 2)
    torch.testing.assert_close(tokens[:, 0], (model.cls_token + pos[:, :1]).expand(3, 1, -1)[:, 0])
    torch.testing.assert_close(tokens[:, 3:], model.patch_embed(images) + pos[:, 1:])


def test_mask_token_replaces_patches_before_pos_embed():
    model = pico()
    with torch.no_grad():
        model.mask_token.normal_()
    images = torch.randn(2, 3, 28, 28)
    masks = torch.tensor([[True, False, False, True], [False, False, False, False]])
    tokens = model.prepare_tokens_with_masks(images, masks)
    patches = model.patch_embed(images)
    pos = model.interpolate_pos_encoding(2, 2)[:, 1:]
    expected = torch.where(masks[..., None], model.mask_token[None], patches) + pos
    torch.testing.assert_close(tokens[:, 1:], expected)
    assert not torch.allclose(tokens[0, 1], patches[0, 0] + pos[0, 0])
    out = model.forward_features(images, masks)
    assert out["masks"] is masks
    # An image without masked patches is unaffected by the other image's mask.
    torch.testing.assert_close(out["x_prenorm"][1], model.forward_features(images[1:])["x_prenorm"][0])


def test_get_intermediate_layers_matches_forward_features():
    model = pico(num_register_tokens=1)
    images = torch.randn(2, 3, 42, 28)
    full = model.forward_features(images)
    last = model.get_intermediate_layers(images, n=1)[0]
    torch.testing.assert_close(last, full["x_norm_patchtokens"])
    four = model.get_intermediate_layers(images, n=4, reshape=True, return_class_token=True)
    assert len(four) == 4
    patches, cls = four[-1]
    assert patches.shape == (2, 64, 3, 2) and cls.shape == (2, 64)
    torch.testing.assert_close(cls, full["x_norm_clstoken"])
    torch.testing.assert_close(patches.flatten(2).transpose(1, 2), full["x_norm_patchtokens"])
    # Block 0 without norm equals one block applied to the prepared tokens.
    raw = model.get_intermediate_layers(images, n=[0], norm=False, return_class_token=True)[0]
    ref = model.blocks[0](model.prepare_tokens_with_masks(images))
    torch.testing.assert_close(raw[0], ref[:, 2:])
    torch.testing.assert_close(raw[1], ref[:, 0])
    with pytest.raises(ValueError):
        model.get_intermediate_layers(images, n=[7])


def test_init_statistics():
    torch.manual_seed(0)
    model = build_vit("vit_tiny", num_register_tokens=4)
    assert model.cls_token.abs().max() < 1e-4 and model.register_tokens.abs().max() < 1e-4
    assert torch.count_nonzero(model.mask_token) == 0
    # trunc_normal_ cuts at +-2 (absolute, as in timm/DINOv2), so at std 0.02 it is a plain normal.
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(model.blocks[3].ls1.gamma == 1e-5)
    w = model.blocks[0].attn.qkv.weight
    assert w.std().item() == pytest.approx(0.02, rel=0.05)
    assert math.isclose(model.blocks[0].attn.qkv.bias.abs().sum().item(), 0.0)

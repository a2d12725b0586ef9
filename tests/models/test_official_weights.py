"""Official DINOv2 checkpoint naming: export, save, load back, identical outputs; clear errors."""

import pytest
import torch

from models import hub
from models.official_weights import (
    OfficialWeightsError,
    infer_vit_kwargs,
    load_official_weights,
    official_to_project,
    project_to_official,
    vit_from_official_state_dict,
)
from models.presets import build_vit
from models.vit import VisionTransformer

# Key names of one block and the top level of a released ViT-g/14 reg4 checkpoint (from the
# official DINOv2 model definition: Block, MemEffAttention, SwiGLUFFNFused, LayerScale).
OFFICIAL_TOP_KEYS = {
    "cls_token", "pos_embed", "register_tokens", "mask_token",
    "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
}  # fmt: skip
OFFICIAL_SWIGLU_BLOCK_KEYS = {
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.w12.weight", "mlp.w12.bias", "mlp.w3.weight", "mlp.w3.bias",
    "ls2.gamma",
}  # fmt: skip


def tiny(**kw):
    torch.manual_seed(0)
    return build_vit("vit_pico", img_size=56, init_values=1.0, **kw).eval()


def test_keys_follow_official_names():
    sd = project_to_official(tiny(ffn_layer="swiglufused", num_register_tokens=4))
    top = {k for k in sd if not k.startswith("blocks.")}
    assert top == OFFICIAL_TOP_KEYS
    block0 = {k[len("blocks.0.") :] for k in sd if k.startswith("blocks.0.")}
    assert block0 == OFFICIAL_SWIGLU_BLOCK_KEYS
    assert sd["mask_token"].shape == (1, 64) and sd["pos_embed"].shape == (1, 1 + 16, 64)
    mlp_keys = {k.split(".", 2)[2] for k in project_to_official(tiny()) if k.startswith("blocks.1.mlp")}
    assert mlp_keys == {"mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}


@pytest.mark.parametrize("registers, ffn", [(0, "mlp"), (4, "swiglufused")])
def test_round_trip_through_official_file(tmp_path, registers, ffn):
    source = tiny(num_register_tokens=registers, ffn_layer=ffn)
    with torch.no_grad():  # make every parameter non-trivial, including LayerScale and tokens
        for p in source.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "dinov2_vitp14_pretrain.pth"
    torch.save(project_to_official(source), path)

    torch.manual_seed(1)
    target = build_vit("vit_pico", img_size=56, init_values=1.0, num_register_tokens=registers, ffn_layer=ffn)
    images = [torch.randn(2, 3, 56, 56), torch.randn(3, 3, 28, 28)]
    assert not torch.allclose(target.eval()(images[0]), source(images[0]))
    load_official_weights(target, path)
    for a, b in zip(source.forward_features(images), target.eval().forward_features(images)):
        for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens"):
            assert torch.equal(a[key], b[key])


def test_training_checkpoint_forms_are_unwrapped():
    source = tiny()
    chunked = project_to_official(source, block_chunks=2)
    assert "blocks.1.3.mlp.fc1.weight" in chunked and "blocks.0.1.ls2.gamma" in chunked
    backbone = {f"backbone.{k}": v for k, v in chunked.items()}
    teacher_ckpt = {"teacher": {**backbone, "dino_head.mlp.0.weight": torch.zeros(3)}}
    converted = official_to_project(teacher_ckpt)
    assert set(converted) == set(source.state_dict())
    target = build_vit("vit_pico", img_size=56, init_values=1.0)
    load_official_weights(target, teacher_ckpt)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_mismatch_errors_name_the_keys():
    sd = project_to_official(tiny())
    with pytest.raises(OfficialWeightsError) as err:
        load_official_weights(tiny(num_register_tokens=4), sd)
    assert "missing keys (1): register_tokens" in str(err.value)

    extra = dict(sd, **{"blocks.9.ls1.gamma": torch.ones(64)})
    del extra["norm.bias"]
    with pytest.raises(OfficialWeightsError) as err:
        load_official_weights(tiny(), extra)
    assert "unexpected keys (1): blocks.9.ls1.gamma" in str(err.value)
    assert "missing keys (1): norm.bias" in str(err.value)

    with pytest.raises(OfficialWeightsError) as err:
        load_official_weights(build_vit("vit_pico", img_size=28, init_values=1.0), sd)
    assert "pos_embed: checkpoint (1, 17, 64) vs model (1, 5, 64)" in str(err.value)
    assert "img_size" in str(err.value)

    with pytest.raises(OfficialWeightsError) as err:
        load_official_weights(tiny(), {"optimizer": {"step": 3}})


def test_hub_constructor_loads_local_file(tmp_path):
    torch.manual_seed(0)
    model = hub.dinov2_vits14_reg(depth=2)  # release layout, fewer blocks to keep the test fast
    assert model.pos_embed.shape == (1, 1 + 37 * 37, 384) and model.register_tokens.shape == (1, 4, 384)
    assert model.interpolate_antialias and model.interpolate_offset == 0.0
    with torch.device("meta"):
        plain = hub.dinov2_vits14()
    assert plain.interpolate_offset == 0.1 and not plain.interpolate_antialias
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(project_to_official(model), path)
    loaded = hub.dinov2_vits14_reg(weights=path, depth=2).eval()
    images = torch.randn(1, 3, 28, 42)
    torch.testing.assert_close(loaded(images), model.eval()(images), atol=0, rtol=0)
    with pytest.raises(OfficialWeightsError, match="unexpected keys \\(1\\): register_tokens"):
        load_official_weights(plain, path)  # registers in the file, none in the model


@pytest.mark.parametrize(
    "make, preset, expected_name",
    [
        (hub.dinov2_vits14, "vit_small", "dinov2_vits14"),
        (hub.dinov2_vitb14_reg, "vit_base", "dinov2_vitb14_reg4"),
        (hub.dinov2_vitl14, "vit_large", "dinov2_vitl14"),
        (hub.dinov2_vitg14_reg, "vit_giant2", "dinov2_vitg14_reg4"),
    ],
)
def test_architecture_inferred_from_release_shapes(make, preset, expected_name):
    with torch.device("meta"):
        release = make()
        kwargs, found = infer_vit_kwargs(project_to_official(release))
        rebuilt = VisionTransformer(**kwargs)
    assert found == preset
    shapes = {k: v.shape for k, v in release.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    for attr in ("img_size", "num_heads", "num_register_tokens", "interpolate_antialias", "interpolate_offset"):
        assert getattr(rebuilt, attr) == getattr(release, attr), attr
    assert type(rebuilt.blocks[0].mlp) is type(release.blocks[0].mlp)


@pytest.mark.parametrize("registers, ffn", [(0, "mlp"), (2, "swiglufused")])
def test_vit_from_official_state_dict_round_trip(registers, ffn):
    source = tiny(num_register_tokens=registers, ffn_layer=ffn)
    model, name = vit_from_official_state_dict(project_to_official(source), name_hint="pico.pth")
    assert name == ("dinov2_vit_64x4_14" + ("_reg2" if registers else "") + ":pico.pth")
    assert model.num_heads == 2 and model.img_size == (56, 56)  # heads of the same-size preset
    images = torch.randn(2, 3, 56, 56)  # native grid: the resize rule plays no part
    torch.testing.assert_close(model(images), source(images), atol=0, rtol=0)
    # Release conventions are assumed for resizing; this project's own rule is an override away.
    assert (model.interpolate_antialias, model.interpolate_offset) == ((True, 0.0) if registers else (False, 0.1))
    ours, _ = vit_from_official_state_dict(
        project_to_official(source), interpolate_antialias=True, interpolate_offset=0.0
    )
    small = torch.randn(2, 3, 28, 42)
    torch.testing.assert_close(ours(small), source(small), atol=0, rtol=0)
    custom, _ = vit_from_official_state_dict(project_to_official(source), num_heads=4)
    assert custom.num_heads == 4 and not torch.allclose(custom(images), source(images))

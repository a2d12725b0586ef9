"""The paper's ViT-H/16 curation embedder: preset, and loading from timm's and DINOv2's key names.

The timm files here are written from timm's documented ViT parameter names (`reg_token`,
`pos_embed` with or without class/register positions, packed or split SwiGLU `mlp.fc1*`,
`head.*`, no `mask_token`) around a shallow model of ViT-H's width.
"""

import pytest
import torch

from models.official_weights import OfficialWeightsError, project_to_official, vit_from_official_state_dict
from models.presets import build_vit, vit_kwargs
from models.timm_weights import is_timm_layout, timm_to_project
from tasks.embed.backbone import load_embedder

SIZE = 64  # 4 x 4 patches of 16


def shallow_vith(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_vit("vith16", depth=1, img_size=SIZE, init_values=kw.pop("init_values", None), **kw).eval()
    with torch.no_grad():  # every parameter non-trivial, tokens and positions included
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def to_timm(model, layout: str = "class_pos") -> dict[str, torch.Tensor]:
    """This project's backbone written the way timm names a ViT (its inverse of the mapping)."""
    sd = {k: v.clone() for k, v in project_to_official(model).items() if k != "mask_token"}
    regs = sd.pop("register_tokens", None)
    pos = sd.pop("pos_embed")
    if layout == "no_embed_class":  # timm adds no position to the class token: fold it into cls_token
        sd["cls_token"] = sd["cls_token"] + pos[:, :1]
        sd["pos_embed"] = pos[:, 1:]
    elif layout == "registers_positioned":  # part of each register token becomes its position
        sd["pos_embed"] = torch.cat([pos[:, :1], 0.5 * regs, pos[:, 1:]], dim=1)
        regs = 0.5 * regs
    else:
        sd["pos_embed"] = pos
    if regs is not None:
        sd["reg_token"] = regs
    for key in [k for k in sd if ".mlp.w12." in k or ".mlp.w3." in k]:
        value = sd.pop(key)
        if ".w3." in key:
            sd[key.replace(".w3.", ".fc2.")] = value
        elif layout == "split_glu":
            gate, value_half = value.chunk(2, dim=0)
            sd[key.replace(".w12.", ".fc1_g.")], sd[key.replace(".w12.", ".fc1_x.")] = gate, value_half
        else:
            sd[key.replace(".w12.", ".fc1.")] = value
    sd["head.weight"], sd["head.bias"] = torch.randn(10, 1280), torch.zeros(10)
    return sd


def features(model, images):
    with torch.no_grad():
        return model.forward_features(images)["x_norm_clstoken"]


def test_vith16_preset_is_the_papers_curation_embedder():
    kw = vit_kwargs("vith16")
    assert (kw["embed_dim"], kw["depth"], kw["num_heads"], kw["patch_size"], kw["mlp_ratio"]) == (1280, 32, 16, 16, 4.0)
    model = shallow_vith()
    assert model.blocks[0].mlp.fc1.weight.shape == (5120, 1280)
    assert model.patch_embed.proj.weight.shape == (1280, 3, 16, 16)
    assert model.forward_features(torch.randn(1, 3, 224, 224))["x_norm_patchtokens"].shape == (1, 196, 1280)


@pytest.mark.parametrize("layout, kw", [
    ("class_pos", {}),
    ("class_pos", {"init_values": 1e-5}),
    ("no_embed_class", {"num_register_tokens": 4}),
    ("registers_positioned", {"num_register_tokens": 4}),
    ("packed_glu", {"ffn_layer": "swiglufused"}),
    ("split_glu", {"ffn_layer": "swiglufused"}),
])  # fmt: skip
def test_timm_layouts_load_with_identical_features(layout, kw):
    source = shallow_vith(**kw)
    timm_sd = to_timm(source, layout)
    assert is_timm_layout(timm_sd) and not any(k.startswith("head.") for k in timm_to_project(timm_sd))
    model, name = vit_from_official_state_dict(timm_to_project(timm_sd), interpolate_antialias=True,
                                               interpolate_offset=0.0)
    assert model.num_heads == 16
    images = torch.randn(2, 3, SIZE, SIZE)
    torch.testing.assert_close(features(model, images), features(source, images), rtol=1e-5, atol=1e-5)


def test_timm_and_dinov2_files_load_as_the_same_embedder(tmp_path):
    source = shallow_vith(num_register_tokens=4)
    torch.save(to_timm(source, "no_embed_class"), tmp_path / "vith16_timm.pth")
    torch.save({"model": project_to_official(source)}, tmp_path / "vith16_dinov2.pth")
    torch.save({"model_config": {"name": "vith16", "depth": 1, "img_size": SIZE, "init_values": None,
                                 "num_register_tokens": 4},
                "backbone": source.state_dict()}, tmp_path / "vith16_project.pt")
    images = torch.randn(3, 3, SIZE, SIZE)
    expected = torch.nn.functional.normalize(features(source, images), dim=1)
    for name in ("vith16_timm.pth", "vith16_dinov2.pth", "vith16_project.pt"):
        embedder = load_embedder(str(tmp_path / name), image_size=SIZE)
        assert embedder.dim == 1280 and embedder.image_size == SIZE
        torch.testing.assert_close(embedder(images), expected, rtol=1e-4, atol=1e-5, msg=name)
        assert embedder.model_id.startswith("timm:vit") == (name == "vith16_timm.pth")


def test_global_pool_timm_models_are_refused_by_name():
    sd = to_timm(shallow_vith())
    sd["fc_norm.weight"], sd["fc_norm.bias"] = torch.ones(1280), torch.zeros(1280)
    with pytest.raises(OfficialWeightsError, match="fc_norm.weight"):
        timm_to_project(sd)

"""embed.arch: the production preset names the paper's ViT-H/16, and a backbone file of another
architecture is refused before any image is embedded."""

import pytest
import torch
from pydantic import ValidationError

from models.official_weights import project_to_official
from models.presets import build_vit, preset_mismatches
from tasks.embed.backbone import embedder_from_config
from tasks.embed.config import EmbedConfig
from tasks.release.load import CheckpointMismatch


def _save(model, path) -> str:
    torch.save({"model": project_to_official(model)}, path)  # an official DINOv2-layout state dict
    return str(path)


def test_the_production_preset_names_vith16_with_weights_by_uri():
    from flows.config import PipelineConfig
    from lvd.config import load_config

    embed = load_config(PipelineConfig, "lvd-142m").embed
    assert embed.arch == "vith16" and embed.backbone.startswith("s3://")
    with torch.device("meta"):  # the whole ViT-H/16 (631M parameters) without allocating it
        full = build_vit("vith16")
    assert preset_mismatches(full, "vith16") == []
    assert sum(p.numel() for p in full.parameters()) == pytest.approx(631e6, rel=0.01)
    assert load_config(PipelineConfig, "cpu-tiny").embed.arch is None


def test_a_backbone_of_the_named_architecture_is_accepted(tmp_path):
    uri = _save(build_vit("vit_pico", img_size=56).eval(), tmp_path / "pico.pth")
    embedder = embedder_from_config(EmbedConfig(backbone=uri, arch="vit_pico"))
    assert embedder.dim == 64
    assert embedder(torch.zeros(2, 3, 56, 56)).shape == (2, 64)


def test_a_backbone_of_another_architecture_is_refused_naming_the_differences(tmp_path):
    torch.manual_seed(0)
    shallow = _save(build_vit("vith16", depth=1, img_size=64).eval(), tmp_path / "vith16-1block.pth")
    with pytest.raises(CheckpointMismatch, match=r"not the embed.arch=vith16 architecture: depth 1 \(preset vith16: 32\)$"):
        embedder_from_config(EmbedConfig(backbone=shallow, arch="vith16"))
    small = _save(build_vit("vit_tiny", img_size=518).eval(), tmp_path / "vitt.pth")
    with pytest.raises(CheckpointMismatch) as err:
        embedder_from_config(EmbedConfig(backbone=small, arch="vith16"))
    for diff in ("width 192 (preset vith16: 1280)", "depth 12 (preset vith16: 32)", "heads 3 (preset vith16: 16)", "patch 14 (preset vith16: 16)",
                 "mlp Mlp 768 (preset vith16: Mlp 5120)"):
        assert diff in str(err.value)
    # Without embed.arch the same file is whatever it holds.
    assert embedder_from_config(EmbedConfig(backbone=small)).dim == 192


def test_arch_names_a_known_preset_and_a_checkable_backbone():
    with pytest.raises(ValidationError, match="unknown ViT preset 'vit_h16'"):
        EmbedConfig(arch="vit_h16")
    with pytest.raises(CheckpointMismatch, match="a pixels model, whose architecture cannot be checked"):
        embedder_from_config(EmbedConfig(backbone="pixels:16", arch="vith16"))
    # A swapped MLP kind at equal width and depth is a different architecture too.
    with torch.device("meta"):
        swiglu = build_vit("vit_large", ffn_layer="swiglufused")
    assert preset_mismatches(swiglu, "vitl14") == ["mlp SwiGLU 2736 (preset vitl14: Mlp 4096)"]

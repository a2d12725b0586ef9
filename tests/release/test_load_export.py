import json

import pytest
import torch

import lvd
from lvd.cli import main as cli_main
from models.heads import DINOHead
from models.hub import dino_head_from_state_dict, from_safetensors
from models.vit import VisionTransformer
from tasks.release.load import CheckpointMismatch, load_model
from tasks.train.checkpoint import latest_checkpoint
from tasks.train.run import run_training
from tests.train.conftest import needs_fashion_mnist, tiny_config

pytestmark = needs_fashion_mnist


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A checkpoint written by two real training steps (separate iBOT head, so both heads exist)."""
    path = tmp_path_factory.mktemp("run") / "tiny"
    cfg = tiny_config(optim=dict(total_steps=2), loss=dict(ibot_separate_head=True, ibot_prototypes=32))
    run_training(cfg, f"file://{path}", log=lambda m: None)
    return path


def _reference_teacher(run_dir) -> dict:
    """The checkpoint's EMA-teacher tensors, read by torch's own DCP -> torch.save converter."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    ref = latest_checkpoint(f"file://{run_dir}")
    out = run_dir.parent / "converted.pt"
    dcp_to_torch_save(ref.uri.removeprefix("file://"), out)
    model = torch.load(out, weights_only=False)["model"]
    return {k.removeprefix("teacher."): v for k, v in model.items() if k.startswith("teacher.")}


def test_load_returns_the_ema_teacher_with_heads(run_dir):
    backbone, heads = lvd.load(f"file://{run_dir}", heads=True)
    assert isinstance(backbone, VisionTransformer) and not backbone.training
    ref = _reference_teacher(run_dir)
    for k, v in backbone.state_dict().items():
        torch.testing.assert_close(v, ref[f"backbone.{k}"], rtol=0, atol=0)
    assert sorted(heads) == ["dino_head", "ibot_head"]
    for name, head in heads.items():
        for k, v in head.state_dict().items():
            torch.testing.assert_close(v, ref[f"{name}.{k}"], rtol=0, atol=0)
    out = backbone.forward_features(torch.randn(2, 3, 28, 28))
    assert out["x_norm_clstoken"].shape == (2, 64) and out["x_norm_patchtokens"].shape == (2, 4, 64)
    # a checkpoint directory names the same model
    step_dir = latest_checkpoint(f"file://{run_dir}").uri
    same = lvd.load(step_dir)
    torch.testing.assert_close(same.state_dict(), backbone.state_dict())


def test_architecture_that_does_not_match_the_checkpoint_is_refused(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["model"]["arch"] = "vit_tiny"
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatch, match=r"\(vit_tiny\).*\nshape mismatches.*attn.qkv.weight: checkpoint \(192, 64\) vs model \(576, 192\)"):
        load_model(f"file://{copy}")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_model(f"file://{tmp_path}/nothing-here")


def test_export_round_trips_backbone_and_heads(run_dir, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    assert cli_main(["export", f"file://{run_dir}", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["heads"] == ["dino_head", "ibot_head"] and summary["bytes"] == out.stat().st_size
    original, heads = lvd.load(f"file://{run_dir}", heads=True)
    restored, restored_heads = from_safetensors(out, heads=True)
    x = torch.randn(3, 3, 42, 42)  # off the native grid: the resize rule travels with the export
    with torch.no_grad():
        a, b = original.forward_features(x), restored.forward_features(x)
        torch.testing.assert_close(a["x_norm_patchtokens"], b["x_norm_patchtokens"], rtol=0, atol=0)
        for name in heads:
            f = torch.randn(5, 64)
            torch.testing.assert_close(heads[name](f), restored_heads[name](f), rtol=0, atol=0)
    # lvd.load reads the export too
    assert lvd.load(str(out)).state_dict().keys() == original.state_dict().keys()


def test_head_from_official_weight_norm_names():
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, nlayers=3).eval()
    sd = head.state_dict()
    official = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                   "weight_v"): v for k, v in sd.items()}
    rebuilt = dino_head_from_state_dict(official)
    x = torch.randn(4, 16)
    torch.testing.assert_close(rebuilt(x), head(x))


def test_official_training_checkpoint_brings_its_heads(tmp_path):
    """An official DINOv2 training checkpoint ({"teacher": {"backbone.*", "dino_head.*"}}, old weight_norm names)."""
    from models.official_weights import project_to_official
    from models.presets import build_vit

    torch.manual_seed(0)
    backbone = build_vit("vit_pico", drop_path_rate=0.0).eval()
    head = DINOHead(64, 32, hidden_dim=24, bottleneck_dim=8).eval()
    teacher = {f"backbone.{k}": v for k, v in project_to_official(backbone, block_chunks=2).items()}
    for k, v in head.state_dict().items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        teacher[f"dino_head.{k}"] = v
    torch.save({"teacher": teacher}, tmp_path / "training_checkpoint.pth")
    loaded = load_model(str(tmp_path / "training_checkpoint.pth"))
    x = torch.randn(2, 3, 224, 224)  # the native grid (official files follow the releases' resize rule)
    with torch.no_grad():
        torch.testing.assert_close(loaded.backbone.forward_features(x)["x_norm_patchtokens"],
                                   backbone.forward_features(x)["x_norm_patchtokens"])
        f = torch.randn(3, 64)
        torch.testing.assert_close(loaded.heads["dino_head"](f), head(f))
    assert list(loaded.heads) == ["dino_head"]

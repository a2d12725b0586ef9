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
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(f"file://{tmp_path}/nothing-here")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_model(f"file://{tmp_path}/empty-run")


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


def test_every_artifact_kind_lvd_writes_opens_with_lvd_load_and_embeds_alike(run_dir, tmp_path):
    """Run directory, checkpoint directory, runs/{run}/backbone.pt, an lvd export and the same weights
    in official naming all give the same backbone through the one loader, and the embed stage opens
    each of them to the same features; a foreign file is refused with what it holds named."""
    from models.official_weights import project_to_official
    from tasks.embed.backbone import load_embedder
    from tasks.release.load import ModelFormatError
    from tasks.train.export import export_teacher_backbone

    run = f"file://{run_dir}"
    reference = lvd.load(run).state_dict()
    backbone_pt = export_teacher_backbone(run, f"file://{tmp_path}/backbone.pt")
    export = tmp_path / "model.safetensors"
    lvd.export(run, str(export))
    official = tmp_path / "official-names.pth"
    torch.save(project_to_official(lvd.load(run)), official)
    sources = [run, latest_checkpoint(run).uri, backbone_pt, str(export), str(official)]
    images = torch.rand(2, 3, 28, 28)
    features = []
    for uri in sources:
        torch.testing.assert_close(lvd.load(uri).state_dict(), reference, rtol=0, atol=0, msg=uri)
        embedder = load_embedder(uri, autocast_bf16=False)
        assert embedder.preprocess.crop_size == 28, uri  # the resolution the run trained at
        features.append(embedder(images))
    for f in features[1:]:
        torch.testing.assert_close(f, features[0])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFormatError, match=r"holds a dict with keys \['weights'\]"):
        lvd.load(str(tmp_path / "foreign.pt"))
    (tmp_path / "noise.bin").write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="not a PyTorch file"):
        lvd.load(str(tmp_path / "noise.bin"))


def test_a_state_dict_missing_blocks_is_refused_naming_them(tmp_path):
    from models.hub import dinov2_vits14
    from models.official_weights import OfficialWeightsError, project_to_official

    state = project_to_official(dinov2_vits14())
    shallow = {k: v for k, v in state.items() if not k.startswith(("blocks.10.", "blocks.11."))}
    torch.save(shallow, tmp_path / "shallow.pth")
    with pytest.raises(OfficialWeightsError, match=r"missing keys.*blocks\.10\."):
        lvd.load(str(tmp_path / "shallow.pth"))
    gap = {k: v for k, v in project_to_official(build_pico()).items() if not k.startswith("blocks.1.")}
    torch.save(gap, tmp_path / "gap.pth")
    with pytest.raises(OfficialWeightsError, match=r"not \[1\]"):
        lvd.load(str(tmp_path / "gap.pth"))


def build_pico():
    from models.presets import build_vit

    return build_vit("vit_pico", drop_path_rate=0.0)

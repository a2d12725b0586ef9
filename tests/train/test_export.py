"""A run's teacher backbone exported to one file loads as an embedder with the same features."""
import torch

from tasks.embed.backbone import load_embedder
from tasks.train.build import build_ssl
from tasks.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tasks.train.config import TrainConfig
from tasks.train.export import export_teacher_backbone
from storage import uri as su


def test_exported_backbone_matches_the_checkpoint_teacher(tmp_path):
    cfg = TrainConfig.model_validate({"model": {"arch": "vit_pico", "patch_size": 14},
                                      "crops": {"global_crops_size": 56, "local_crops_size": 28},
                                      "loss": {"dino_prototypes": 64, "head_hidden_dim": 64,
                                               "head_bottleneck_dim": 32}})
    run_uri = f"file://{tmp_path}/run"
    su.write_bytes_atomic(su.join(run_uri, "config.json"), cfg.model_dump_json().encode())
    torch.manual_seed(3)
    model = build_ssl(cfg)
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(run_uri, 7, model, torch.optim.AdamW(model.student.parameters()), extra={})
    uri = export_teacher_backbone(run_uri)
    embedder = load_embedder(uri, "cpu", image_size=56)
    x = torch.randn(3, 3, 56, 56)
    teacher = model.teacher["backbone"].eval()
    with torch.no_grad():
        want = torch.nn.functional.normalize(teacher.forward_features(x)["x_norm_clstoken"], dim=-1)
    got = torch.as_tensor(embedder(x))
    assert torch.allclose(got, want, atol=1e-5)
    assert latest_checkpoint(run_uri).step == 7

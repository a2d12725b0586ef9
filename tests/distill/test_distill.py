import math

import pyarrow.parquet as pq
import pytest
import torch

import lvd
from models.official_weights import project_to_official
from models.vit import VisionTransformer
from tasks.distill.config import DistillConfig
from tasks.distill.loop import distill
from tasks.distill.teacher import DistillationError
from tasks.train.build import build_ssl
from tasks.train.checkpoint import save_checkpoint
from tests.train.conftest import needs_fashion_mnist, tiny_config

pytestmark = needs_fashion_mnist


def write_run(path, cfg) -> str:
    """A project run directory holding a (randomly initialised) SSL model, as training writes it."""
    torch.manual_seed(1)
    model = build_ssl(cfg)
    optimizer = torch.optim.AdamW(model.student.parameters())
    uri = f"file://{path}"
    save_checkpoint(uri, 1, model, optimizer, {"step": 1})
    (path / "config.json").write_text(cfg.model_dump_json())
    return uri


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A vit_tiny teacher (192 wide, 12 blocks) with a separate iBOT head."""
    cfg = tiny_config(model=dict(arch="vit_tiny", drop_path_rate=0.0),
                      loss=dict(ibot_separate_head=True, ibot_prototypes=48))
    return write_run(tmp_path_factory.mktemp("teacher") / "run", cfg)


def distill_config(teacher_uri: str, **over) -> DistillConfig:
    base = dict(
        teacher=dict(uri=teacher_uri),
        student=dict(arch="vit_pico", layerscale=0.0, drop_path_rate=0.0),
        crops=dict(global_crops_size=28, local_crops_size=14, local_crops_number=2, color_jitter_p=0.0),
        loss=dict(head_hidden_dim=32, head_bottleneck_dim=16),
        optim=dict(total_steps=10, batch_size_per_rank=16, base_lr=2e-3, lr_scaling="none", warmup_fraction=0.0,
                   warmup_teacher_temp=0.07, freeze_last_layer_fraction=0.0, momentum_teacher=0.9),
        checkpoint=dict(every_steps=5),
        eval=dict(knn_dataset="none"),
        data=dict(source="fashion-mnist", num_workers=0),
        device="cpu",
        cpu_threads=1,
    )
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return DistillConfig.model_validate(base)


def test_distills_into_a_smaller_student_whose_ema_loads(tiny_teacher, tmp_path):
    run = f"file://{tmp_path}/student"
    summary = distill(distill_config(tiny_teacher), run, log=lambda m: None)
    rows = pq.read_table(tmp_path / "student" / "metrics.parquet").to_pylist()
    assert [r["step"] for r in rows] == list(range(1, 11))
    for key in ("total_loss", "dino_loss", "ibot_loss", "koleo_loss"):
        assert all(math.isfinite(r[key]) for r in rows), key
    for key in ("total_loss", "dino_loss", "ibot_loss"):
        first, last = [r[key] for r in rows[:3]], [r[key] for r in rows[-3:]]
        assert sum(last) < sum(first) - 0.03, (key, first, last)
    assert summary["student"]["params"] < summary["teacher"]["params"]
    backbone, heads = lvd.load(run, heads=True)
    assert isinstance(backbone, VisionTransformer) and backbone.embed_dim == 64
    # the student predicts over the teacher's prototypes, with a separate iBOT head like the teacher's
    assert heads["dino_head"].last_layer.weight.shape == (64, 16)
    assert heads["ibot_head"].last_layer.weight.shape == (48, 16)
    with torch.no_grad():
        assert torch.isfinite(backbone.forward_features(torch.randn(2, 3, 28, 28))["x_norm_clstoken"]).all()


@pytest.fixture(scope="module")
def official_teacher(tiny_teacher, tmp_path_factory):
    """The vit_tiny teacher's backbone alone, saved as a released DINOv2 file (no heads)."""
    path = tmp_path_factory.mktemp("released") / "dinov2_vittiny14_pretrain.pth"
    torch.save(project_to_official(lvd.load(tiny_teacher)), path)
    return str(path)


def test_a_headless_teacher_teaches_its_features(official_teacher, tmp_path):
    run = tmp_path / "student"
    cfg = distill_config(official_teacher, optim=dict(total_steps=12), checkpoint=dict(every_steps=12))
    summary = distill(cfg, f"file://{run}", log=lambda m: None)
    assert summary["teacher"]["targets"] == "features"
    rows = pq.read_table(run / "metrics.parquet").to_pylist()
    assert all("dino_loss" not in r or r["dino_loss"] is None for r in rows)
    for key in ("cls_loss", "patch_loss", "total_loss"):
        first, last = [r[key] for r in rows[:3]], [r[key] for r in rows[-3:]]
        assert sum(last) < 0.9 * sum(first), (key, first, last)
    for key in ("cls_cosine", "patch_cosine"):
        first, last = [r[key] for r in rows[:3]], [r[key] for r in rows[-3:]]
        assert sum(last) / 3 > sum(first) / 3 + 0.1, (key, first, last)

    # heads stay untrained and frozen at loss.head_prototypes; the run loads and evaluates like any other
    _, heads = lvd.load(f"file://{run}", heads=True)
    assert heads["dino_head"].last_layer.weight.shape[0] == 4096 and "ibot_head" not in heads
    with pytest.raises(DistillationError, match="has no DINO head, and loss.targets=heads"):
        distill(distill_config(official_teacher, loss=dict(targets="heads")), f"file://{tmp_path}/x", log=print)


def test_a_teacher_with_heads_can_teach_features_too(tiny_teacher, tmp_path):
    cfg = distill_config(tiny_teacher, loss=dict(targets="features"), optim=dict(total_steps=2))
    summary = distill(cfg, f"file://{tmp_path}/s", log=lambda m: None)
    assert summary["teacher"]["targets"] == "features" and summary["final"]["cls_cosine"] > -1


def test_bad_pairs_are_refused_before_work_starts(tiny_teacher, tmp_path):
    pico_teacher = write_run(tmp_path / "pico", tiny_config())
    with pytest.raises(DistillationError, match="student vit_tiny .* is larger than its teacher"):
        distill(distill_config(pico_teacher, student=dict(arch="vit_tiny")), f"file://{tmp_path}/a", log=print)
    with pytest.raises(DistillationError, match="teacher.arch is vit_small .* holds width 192, depth 12"):
        distill(distill_config(tiny_teacher, teacher=dict(arch="vit_small")), f"file://{tmp_path}/b", log=print)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="without stochastic depth"):
        distill_config(tiny_teacher, student=dict(drop_path_rate=0.1))


def test_masked_positions_shared_head_and_softmax_centering(tmp_path):
    """A teacher whose DINO head also serves iBOT; iBOT only at sampled positions; softmax centering."""
    teacher = write_run(tmp_path / "shared", tiny_config(model=dict(arch="vit_tiny", drop_path_rate=0.0)))
    cfg = distill_config(teacher, loss=dict(ibot_patches="masked", centering="softmax", mask_probability=1.0),
                         optim=dict(total_steps=3))
    summary = distill(cfg, f"file://{tmp_path}/s", log=lambda m: None)
    rows = pq.read_table(tmp_path / "s" / "metrics.parquet").to_pylist()
    assert all(math.isfinite(r["ibot_loss"]) and r["ibot_loss"] > 0 for r in rows)
    _, heads = lvd.load(f"file://{tmp_path}/s", heads=True)
    assert list(heads) == ["dino_head"] and summary["steps"] == 3


def test_a_killed_distillation_resumes_step_for_step(tiny_teacher, tmp_path):
    cfg = distill_config(tiny_teacher, optim=dict(total_steps=6), checkpoint=dict(every_steps=3))
    distill(cfg, f"file://{tmp_path}/full", log=lambda m: None)
    assert distill(cfg, f"file://{tmp_path}/killed", stop_at_step=4, log=lambda m: None)["stopped_at"] == 4
    distill(cfg, f"file://{tmp_path}/killed", log=lambda m: None)
    full = pq.read_table(tmp_path / "full" / "metrics.parquet").to_pylist()
    resumed = pq.read_table(tmp_path / "killed" / "metrics.parquet").to_pylist()
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full, resumed):
        assert a["total_loss"] == b["total_loss"], a["step"]

import pytest

from tests.train.conftest import needs_fashion_mnist


@needs_fashion_mnist
@pytest.mark.slow
def test_distill_then_evaluate_flows_publish_artifacts(prefect_backend, tmp_path):
    from prefect.artifacts import Artifact

    from flows.distill_dinov2 import DistillFlowConfig, distill_dinov2
    from flows.evaluate_dinov2 import EvaluateFlowConfig, evaluate_dinov2
    from storage.config import StorageConfig
    from tasks.evaluate.config import EvaluateConfig, EvalSetConfig
    from tests.distill.test_distill import distill_config, write_run
    from tests.train.conftest import tiny_config

    teacher = write_run(tmp_path / "teacher", tiny_config())
    storage = StorageConfig(root=f"file://{tmp_path}")
    dcfg = distill_config(teacher, optim=dict(total_steps=2),
                          eval=dict(knn_dataset="fashion-mnist", knn_train_size=100, knn_test_size=50, knn_ks=[10]))
    summary = distill_dinov2(DistillFlowConfig(storage=storage, run="student", distill=dcfg))
    assert summary["steps"] == 2 and "knn_top1_k10" in summary["teacher_knn"]
    assert "knn_top1_k10" in str(Artifact.get("distill-student-knn").data)

    ecfg = EvaluateConfig(models=[f"file://{tmp_path}/runs/student"], baselines=["pixels"],
                          datasets=[EvalSetConfig(train_size=100, test_size=50)], image_size=28,
                          linear=dict(lrs=(0.1,), epochs=1), pca=dict(n_images=1, image_size=56),
                          patch_match=dict(n_images=1, image_size=56), device="cpu")
    result = evaluate_dinov2(EvaluateFlowConfig(storage=storage, run="eval", evaluate=ecfg))
    assert [row["model"] for row in result["table"]] == ["student@step-2", "pixels:32"]
    assert "fashion-mnist/linear_top1" in str(Artifact.get("evaluate-eval-table").data)
    assert "| student@step-2 |" in Artifact.get("evaluate-eval-report").data
    assert "data:image/png;base64," in Artifact.get("evaluate-eval-pca-student-step-2").data
    assert "data:image/png;base64," in Artifact.get("evaluate-eval-matches-student-step-2").data
    assert "patch-pairs/patch_match_flip" in str(Artifact.get("evaluate-eval-table").data)


@needs_fashion_mnist
@pytest.mark.slow
def test_lvd_evaluate_and_distill_commands_read_the_preset(prefect_backend, tmp_path, capsys):
    import json

    from lvd.cli import main
    from tests.distill.test_distill import write_run
    from tests.train.conftest import tiny_config

    root = f"file://{tmp_path}"
    # distilling before the preset's train run exists names the missing teacher
    assert main(["distill", "--config", "cpu-tiny", f"storage.root={root}"]) == 2
    assert "runs/lvd-demo-vit_pico does not exist" in capsys.readouterr().err
    (tmp_path / "runs").mkdir()
    write_run(tmp_path / "runs" / "lvd-demo-vit_pico", tiny_config())
    assert main(["evaluate", "--config", "cpu-tiny", f"storage.root={root}", "evaluate.baselines=[pixels]",
                 "evaluate.datasets=[{name: fm, train: fashion-mnist, test: 'fashion-mnist:test', train_size: 60, "
                 "test_size: 20}]", "evaluate.copy_detection.enabled=false", "evaluate.pca.enabled=false",
                 "evaluate.linear.epochs=1"]) == 0
    report = (tmp_path / "runs" / "lvd-demo-eval" / "summary.json").read_text()
    names = [r["model"] for r in json.loads(report)["table"]]
    assert names == ["lvd-demo-vit_pico@step-1", "pixels:28", "random:lvd-demo-vit_pico@0"]


@needs_fashion_mnist
@pytest.mark.slow
def test_lvd_distill_from_a_released_backbone_file(prefect_backend, tmp_path):
    """`lvd distill` with a teacher saved as an official DINOv2 backbone (no heads): the student's
    projected features turn towards the teacher's."""
    import json

    import pyarrow.parquet as pq
    import torch

    import lvd
    from lvd.cli import main
    from models.official_weights import project_to_official
    from tests.distill.test_distill import write_run
    from tests.train.conftest import tiny_config

    run = write_run(tmp_path / "teacher", tiny_config(model=dict(arch="vit_tiny", drop_path_rate=0.0)))
    official = tmp_path / "dinov2_vittiny14_pretrain.pth"
    torch.save(project_to_official(lvd.load(run)), official)
    assert main(["distill", "--config", "cpu-tiny", f"storage.root=file://{tmp_path}",
                 f"distill.teacher.uri={official}", "distill.optim.total_steps=6", "distill.optim.batch_size_per_rank=16",
                 "distill.crops.local_crops_number=2", "distill.checkpoint.every_steps=6",
                 "distill.eval.knn_dataset=none", "distill.data.num_workers=0"]) == 0
    out = tmp_path / "runs" / "lvd-demo-distill-vit_pico"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"]["targets"] == "features" and summary["steps"] == 6
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    assert rows[-1]["cls_loss"] < rows[0]["cls_loss"] and rows[-1]["patch_loss"] < rows[0]["patch_loss"]
    assert rows[-1]["cls_cosine"] > rows[0]["cls_cosine"] and rows[-1]["patch_cosine"] > rows[0]["patch_cosine"]
    assert lvd.load(f"file://{out}").embed_dim == 64

import pytest

from tests.train.conftest import needs_fashion_mnist, tiny_config


@needs_fashion_mnist
@pytest.mark.slow
def test_train_flow_trains_and_publishes_artifacts(prefect_backend, tmp_path):
    from prefect.artifacts import Artifact

    from flows.train_dinov2 import TrainFlowConfig, train_dinov2
    from storage.config import StorageConfig

    train = tiny_config(
        optim=dict(total_steps=3),
        eval=dict(knn_dataset="fashion-mnist", knn_every_steps=2, knn_train_size=100, knn_test_size=50, knn_ks=[10, 20]),
    )
    cfg = TrainFlowConfig(storage=StorageConfig(root=f"file://{tmp_path}"), run="flow-test", train=train)
    summary = train_dinov2(cfg)
    assert summary["steps"] == 3 and sorted(summary["knn"], key=int) == ["0", "2", "3"]
    assert (tmp_path / "runs" / "flow-test" / "checkpoints" / "step-000003" / "_COMPLETE.json").exists()
    md = Artifact.get("train-flow-test-knn")
    assert md is not None and "data:image/png;base64," in md.data and "| 3 |" in md.data
    table = Artifact.get("train-flow-test-final")
    assert table is not None and "dino_loss" in str(table.data)

import math

import pyarrow.parquet as pq
import pytest
import torch

from tasks.train.checkpoint import latest_checkpoint, list_checkpoints
from tasks.train.loop import NonFiniteLossError, train
from tests.train.conftest import needs_fashion_mnist, tiny_config

pytestmark = needs_fashion_mnist


def _losses(run_dir):
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    return {r["step"]: (r["total_loss"], r["dino_loss"], r["ibot_loss"], r["koleo_loss"]) for r in rows if r.get("total_loss") is not None}


@pytest.mark.parametrize("order", ["shards", "global"])
def test_killed_run_resumes_step_for_step(tmp_path, order):
    cfg = tiny_config(data=dict(order=order))
    full = tmp_path / "full"
    train(cfg, f"file://{full}", log=lambda m: None)
    killed = tmp_path / "killed"
    out = train(cfg, f"file://{killed}", stop_at_step=3, log=lambda m: None)
    assert out["stopped_at"] == 3 and latest_checkpoint(f"file://{killed}").step == 2
    summary = train(cfg, f"file://{killed}", log=lambda m: None)
    ref, resumed = _losses(full), _losses(killed)
    assert sorted(ref) == sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in ref:
        assert ref[step] == resumed[step], step
    assert summary["steps"] == 6 and [c.step for c in list_checkpoints(f"file://{killed}")] == [4, 6]
    # a finished run is not trained again
    assert train(cfg, f"file://{killed}", log=lambda m: None)["steps"] == 6


def test_nan_stops_the_run_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config()
    run = f"file://{tmp_path}/run"

    def poison(step, batch):
        if step == 4:
            batch["collated_global_crops"][0, 0, 0, 0] = float("nan")

    with pytest.raises(NonFiniteLossError, match="step 5.*step-000004"):
        train(cfg, run, before_step=poison, log=lambda m: None)
    assert latest_checkpoint(run).step == 4
    assert max(_losses(tmp_path / "run")) == 4
    # the kept checkpoint is usable: resuming without the fault finishes the run
    assert train(cfg, run, log=lambda m: None)["steps"] == 6


def test_metrics_hold_every_term_and_schedule(tmp_path):
    cfg = tiny_config(optim=dict(total_steps=4, freeze_last_layer_fraction=0.5), loss=dict(centering="sinkhorn_knopp", ibot_separate_head=True,
                                                          ibot_prototypes=32))
    summary = train(cfg, f"file://{tmp_path}/r", log=lambda m: None)
    rows = pq.read_table(tmp_path / "r" / "metrics.parquet").to_pylist()
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for col in ("dino_loss", "ibot_loss", "koleo_loss", "lr", "weight_decay", "momentum", "teacher_temp",
                "images_per_s", "memory_mb", "teacher_entropy", "grad_norm_backbone", "grad_norm_ibot_head"):
        assert all(r[col] is not None and math.isfinite(r[col]) for r in rows), col
    assert rows[0]["teacher_temp"] == pytest.approx(0.04) and rows[1]["last_layer_lr"] == 0.0 < rows[2]["last_layer_lr"]
    assert rows[-1]["momentum"] > rows[0]["momentum"]
    assert summary["ln_k"] == pytest.approx(math.log(64))

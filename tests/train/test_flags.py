"""Runs whose teacher learned little are flagged, in the log, summary.json and the evaluate report."""

import json
import math

import pytest

from tasks.evaluate.config import EvaluateConfig, EvalSetConfig
from tasks.evaluate.run import evaluate
from tasks.train.config import MonitorConfig
from tasks.train.flags import ema_loss_gap, run_flags, teacher_entropy_flag
from tasks.train.run import run_training
from tests.train.conftest import needs_fashion_mnist, tiny_config


def test_ema_loss_gap_is_the_teacher_ema_of_the_loss_curve():
    losses = [5.0, 4.0, 3.5, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    momenta = [0.5 + 0.05 * i for i in range(10)]
    # reference: the teacher's weight on each step's student, (1 - m_s) prod_{u > s} m_u, the first loss
    # standing for the random init
    weights = [(1 - momenta[s]) * math.prod(momenta[s + 1:]) for s in range(1, 10)]
    init = math.prod(momenta[1:])
    ema = init * losses[0] + sum(w * l for w, l in zip(weights, losses[1:]))
    end = sum(losses[-2:]) / 2  # the mean of the last fifth
    assert ema_loss_gap(list(range(1, 11)), losses, momenta) == pytest.approx((ema - end) / (losses[0] - end))
    # rows logged every other step: each row's momentum applies once per step since the row before
    assert ema_loss_gap([0, 2, 4], [3.0, 2.0, 1.0], [0.9, 0.5, 0.5]) == pytest.approx(
        ((0.25 * (0.25 * 3.0 + 0.75 * 2.0) + 0.75 * 1.0) - 1.0) / 2.0)
    assert ema_loss_gap([1, 2, 3], [1.0, 1.0, 1.5], [0.9] * 3) is None  # the loss did not fall: no proxy


def test_entropy_is_read_after_the_warmup_and_the_knn_gap_decides_where_monitored():
    ln_k = math.log(64)
    rows = [{"step": s, "teacher_entropy": ln_k * (0.99 if s <= 10 else 0.9)} for s in range(1, 31)]
    assert teacher_entropy_flag(rows, 10, ln_k, 0.95) is None  # near uniform only during the warm-up
    flag = teacher_entropy_flag(rows, 10, ln_k, 0.85)
    assert flag["flag"] == "teacher_near_uniform" and flag["value"] == pytest.approx(0.9)
    assert "optim.teacher_temp" in flag["message"]
    monitor = MonitorConfig(teacher_lag_knn_margin=0.05)
    out = run_flags(rows, monitor, 10, ln_k, {"knn_top1_k20": 0.62, "knn_top1_k10": 0.9},
                    {"knn_top1_k20": 0.55, "knn_top1_k10": 0.6})
    assert [f["flag"] for f in out["flags"]] == ["teacher_lags_student"]
    assert out["teacher_lag_measure"] == "knn" and out["student_minus_teacher_knn"] == pytest.approx(0.07)
    assert "optim.momentum_teacher" in out["flags"][0]["message"]
    assert run_flags(rows, monitor, 10, ln_k, {"knn_top1_k20": 0.58}, {"knn_top1_k20": 0.55})["flags"] == []


def _short(**over):
    return tiny_config(optim=dict(total_steps=8, **over), checkpoint=dict(every_steps=100))


@needs_fashion_mnist
def test_a_slow_soft_teacher_is_flagged_and_a_following_one_is_not(tmp_path):
    # EMA 0.999 keeps the random init; temperature 1 makes every target near uniform
    logs = []
    flagged = run_training(_short(momentum_teacher=0.999, teacher_temp=1.0, warmup_teacher_temp=1.0),
                    f"file://{tmp_path}/slow", log=logs.append)
    assert [f["flag"] for f in flagged["flags"]] == ["teacher_near_uniform", "teacher_lags_student"]
    assert flagged["teacher_lag_measure"] == "loss" and flagged["teacher_loss_lag_share"] > 0.9
    warnings = [m for m in logs if m.startswith("WARNING")]
    assert len(warnings) == 2 and "monitor.uniform_entropy_fraction" in warnings[0]
    assert json.loads((tmp_path / "slow" / "summary.json").read_text())["flags"] == flagged["flags"]

    # a teacher that follows the student closely to the end (EMA 0.5 throughout), the tiny recipe's temperatures
    fine = run_training(_short(momentum_teacher=0.5, momentum_teacher_end=0.5), f"file://{tmp_path}/fine", log=logs.append)
    assert fine["flags"] == [] and fine["final"]["teacher_entropy"] < 0.95 * fine["ln_k"]
    assert fine["teacher_loss_lag_share"] < 0.25

    cfg = EvaluateConfig(models=[f"file://{tmp_path}/slow", f"file://{tmp_path}/fine"], baselines=[],
                         datasets=[EvalSetConfig(train_size=50, test_size=20)], image_size=28,
                         knn=dict(ks=(10,)), linear=dict(enabled=False), copy_detection=dict(enabled=False),
                         pca=dict(enabled=False), patch_match=dict(enabled=False), device="cpu")
    summary = evaluate(cfg, f"file://{tmp_path}/eval", log=logs.append)
    assert [f["flag"] for f in summary["training_flags"]["slow@step-8"]] == [
        "teacher_near_uniform", "teacher_lags_student"]
    assert summary["training_flags"]["fine@step-8"] == []
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Training flags" in report and "- slow@step-8: **teacher_near_uniform**" in report
    assert "- fine@step-8: none raised" in report

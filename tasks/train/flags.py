"""Warnings about a finished run that nothing else raises: the loss and the k-NN can look fine
while the teacher, the model every later stage reads, learned little.

Two flags, each with its likely cause and the setting to change:

* ``teacher_near_uniform``: after the teacher-temperature warm-up the teacher's targets keep an
  entropy above ``monitor.uniform_entropy_fraction`` of ln K (uniform targets carry no signal;
  DESIGN "Collapse").
* ``teacher_lags_student``: the student ends ahead of its EMA teacher by more than a margin. Where
  k-NN is monitored this is the student's k-NN top-1 minus the teacher's at the last step; where
  it is not, a loss-based proxy: the teacher EMA of the training-loss curve (the same momenta
  applied to the per-step loss as to the weights, started at the first loss, the loss of the
  random init) against the student's loss at the end, as a share of the run's loss fall. A
  teacher that follows the student ends near 0; one that still holds its random init near 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from storage import uri as su

LAG_K = 20  # the k of the k-NN gap (the first monitored k where 20 is not monitored)


def _tail_mean(values: Sequence[float]) -> float:
    tail = values[-max(1, len(values) // 5):]
    return sum(tail) / len(tail)


def teacher_entropy_flag(rows: list[dict], warmup_steps: int, ln_k: float, fraction: float) -> dict[str, Any] | None:
    """Flag when the teacher entropy of the last fifth of the steps after the warm-up exceeds
    ``fraction`` x ln K; None when it does not, or when no step follows the warm-up."""
    values = [float(r["teacher_entropy"]) for r in rows
              if r.get("teacher_entropy") is not None and int(r["step"]) > warmup_steps]
    if not values:
        return None
    entropy = _tail_mean(values)
    if entropy <= fraction * ln_k:
        return None
    return {
        "flag": "teacher_near_uniform",
        "value": entropy / ln_k,
        "threshold": fraction,
        "message": (
            f"teacher targets stay near uniform after the teacher-temperature warm-up: entropy {entropy:.3f} = "
            f"{entropy / ln_k:.3f} ln K (flag above {fraction:g} ln K). Likely cause: targets too soft for this "
            "batch and prototype count, or a collapsed backbone; lower optim.teacher_temp / "
            "optim.warmup_teacher_temp, use fewer loss.dino_prototypes, or check model.layerscale "
            f"(raise monitor.uniform_entropy_fraction to silence)"
        ),
    }


def ema_loss_gap(steps: Sequence[int], losses: Sequence[float], momenta: Sequence[float]) -> float | None:
    """The loss-based lag proxy: (EMA of the loss curve - the student's loss at the end) / (first
    loss - the student's loss at the end), where the EMA applies each logged row's momentum once
    per step since the previous row, like the teacher's weights. The student's end loss is the
    mean of the last fifth of the rows (losses are noisy per batch). None when the loss did not fall."""
    if len(losses) < 2:
        return None
    ema, prev = float(losses[0]), int(steps[0])
    for step, loss, m in zip(steps[1:], losses[1:], momenta[1:]):
        decay = float(m) ** max(1, int(step) - prev)
        ema = decay * ema + (1.0 - decay) * float(loss)
        prev = int(step)
    end = _tail_mean([float(v) for v in losses])
    fall = float(losses[0]) - end
    if not (fall > 0 and math.isfinite(ema)):
        return None
    return (ema - end) / fall


def teacher_lag_flag(rows: list[dict], knn_gap: float | None, knn_margin: float,
                     loss_share: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(what was measured, the flag or None). ``knn_gap`` is student minus teacher top-1 at the
    end (None where k-NN is not monitored: the loss-based proxy decides)."""
    if knn_gap is not None:
        measured = {"teacher_lag_measure": "knn", "student_minus_teacher_knn": knn_gap}
        if knn_gap <= knn_margin:
            return measured, None
        detail = (f"the student's k-NN top-1 ends {100 * knn_gap:.1f} points above its teacher's "
                  f"(flag above {100 * knn_margin:g}, monitor.teacher_lag_knn_margin)")
        value, threshold = knn_gap, knn_margin
    else:
        train = [r for r in rows if r.get("total_loss") is not None and r.get("momentum") is not None]
        gap = ema_loss_gap([r["step"] for r in train], [r["total_loss"] for r in train],
                           [r["momentum"] for r in train])
        measured = {"teacher_lag_measure": "loss", "teacher_loss_lag_share": gap}
        if gap is None or gap <= loss_share:
            return measured, None
        detail = (f"the teacher EMA of the loss curve ends {gap:.0%} of the run's loss fall above the student's "
                  f"loss (flag above {loss_share:.0%}, monitor.teacher_lag_loss_share; k-NN is not monitored)")
        value, threshold = gap, loss_share
    return measured, {
        "flag": "teacher_lags_student",
        "value": value,
        "threshold": threshold,
        "message": (
            f"the teacher lags the student: {detail}. Likely cause: a teacher EMA too slow for the run's "
            "length; leave optim.momentum_teacher unset (the momentum then follows the run, "
            "optim.momentum_teacher_lag) or lower it, or train longer"
        ),
    }


def knn_gap(student: dict[str, float], teacher: dict[str, float]) -> float | None:
    """Student minus teacher top-1 at k=20 (or the smallest k both report)."""
    ks = sorted(int(k.rsplit("k", 1)[1]) for k in teacher if k.startswith("knn_top1_k") and k in student)
    if not ks:
        return None
    k = LAG_K if LAG_K in ks else ks[0]
    return float(student[f"knn_top1_k{k}"]) - float(teacher[f"knn_top1_k{k}"])


def run_flags(rows: list[dict], monitor, warmup_steps: int, ln_k: float,
              knn_student: dict[str, float] | None, knn_teacher: dict[str, float] | None) -> dict[str, Any]:
    """``{"flags": [...], **measured}`` of a finished run (``monitor`` is its MonitorConfig)."""
    gap = knn_gap(knn_student, knn_teacher) if knn_student and knn_teacher else None
    measured, lag = teacher_lag_flag(rows, gap, monitor.teacher_lag_knn_margin, monitor.teacher_lag_loss_share)
    entropy = teacher_entropy_flag(rows, warmup_steps, ln_k, monitor.uniform_entropy_fraction)
    return {"flags": [f for f in (entropy, lag) if f is not None], **measured}


def warn(flags: list[dict], log) -> None:
    """Each flag as a warning line in the run's log."""
    for f in flags:
        log(f"WARNING ({f['flag']}): {f['message']}")


def read_run_flags(run_uri: str) -> list[dict] | None:
    """The flags a finished run recorded in its summary.json (None when it has no summary or
    records no flags, as runs before the monitor did)."""
    uri = su.join(run_uri, "summary.json")
    if not su.exists(uri):
        return None
    return json.loads(su.read_bytes(uri)).get("flags")

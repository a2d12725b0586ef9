"""Distillation: the engine's loop (:mod:`tasks.engine.loop`) with the distillation objective, in one
process (CPU or one GPU), resumable, in the training run layout.

The saved model is an ``SSLMetaArch`` of the student whose ``teacher`` half is the student's EMA,
and the run's ``config.json`` describes the student, so ``lvd.load``, evaluate-dinov2 and
train-dinov2 (to continue self-supervised) read the result like any training run. The frozen
teacher is not saved: ``distill.json`` names it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.distill.config import DistillConfig
from tasks.engine.loop import run_objective
from tasks.engine.objectives import DistillObjective


def prepare(cfg: DistillConfig):
    """Teacher, student config and student model, every check done: nothing has been trained yet."""
    objective = DistillObjective(cfg)
    return objective.teacher, objective.cfg, objective.build()


def distill(cfg: DistillConfig, run_uri: str, *, stop_at_step: int | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Distill (or resume distilling) into ``run_uri``; returns the run summary."""
    return run_objective(DistillObjective(cfg), run_uri, stop_at_step=stop_at_step, log=log)

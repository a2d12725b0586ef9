"""DINOv2 pretraining: the engine's loop (:mod:`tasks.engine.loop`) with the self-supervised objective.

Calling :func:`train` again on the same run URI resumes from the newest good checkpoint and
reproduces the uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.engine.loop import BatchHook, NonFiniteLossError, run_objective  # noqa: F401 (re-exported)
from tasks.engine.objectives import SSLObjective
from tasks.train.config import TrainConfig


def train(
    cfg: TrainConfig,
    run_uri: str,
    *,
    stop_at_step: int | None = None,
    before_step: BatchHook | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the training of ``cfg`` in ``run_uri``; returns the run summary.

    ``stop_at_step`` ends the call after that many steps as if the process had been killed
    (no final checkpoint); ``before_step(step, batch)`` may inspect or alter a batch.
    """
    return run_objective(SSLObjective(cfg), run_uri, stop_at_step=stop_at_step, before_step=before_step, log=log)

"""``run_training(cfg, run_uri) -> summary``: the plain function behind the train-dinov2 flow."""

from __future__ import annotations

import json
from collections.abc import Callable

from storage import uri as su
from tasks.train.config import TrainConfig
from tasks.train.launch import launch


def run_training(cfg: TrainConfig, run_uri: str, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) into ``run_uri``; also stores the config next to the metrics."""
    su.write_bytes_atomic(su.join(run_uri, "config.json"), cfg.model_dump_json(indent=1).encode())
    summary = launch(cfg, run_uri, log=log)
    if not summary.get("run_uri"):
        raise RuntimeError(f"training of {run_uri} ended without a summary: {json.dumps(summary)}")
    return summary

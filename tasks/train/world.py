"""Refuse, before any work, a number of processes that a run's config or checkpoint cannot use.

What has to hold whatever the world size: the global batch of every phase splits evenly over the
processes (``optim.global_batch_size``), and the data streams are the ones the newest checkpoint
was read with (``data.streams``; the sample order continues only then). The launcher checks this before starting torchrun, and every process
again before it builds the model.
"""

from __future__ import annotations

from tasks.train.checkpoint import latest_checkpoint, read_marker
from tasks.train.config import TrainConfig
from tasks.train.phases import Phase, plan_phases


def check_world(cfg: TrainConfig, world_size: int, run_uri: str | None = None) -> list[Phase]:
    """The run's phases at ``world_size`` processes; ValueError naming the key when they do not fit."""
    phases = plan_phases(cfg, world_size)
    ref = latest_checkpoint(run_uri) if run_uri is not None else None
    saved = read_marker(ref).get("data") if ref is not None else None
    if saved is not None and saved.get("streams") != cfg.data.streams:
        raise ValueError(
            f"{ref.uri} read its data as data.streams={saved.get('streams')}, this config has "
            f"data.streams={cfg.data.streams}; the sample order cannot continue. Set data.streams back, "
            "or train into a new run"
        )
    return phases

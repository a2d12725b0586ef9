"""The phases of a run: the base resolution, then optionally the high-resolution adaptation.

A phase fixes what the data pipeline produces (crop sizes, images per process) for a range of
global steps; everything else (model, optimiser, schedules) runs on unchanged. The plan is a
pure function of the config, so a resumed run finds the same phase at the same step, and the
checkpoint records the phase it was written in so a changed plan is caught on resume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from tasks.train.config import TrainConfig

PhaseName = Literal["base", "high_res"]


@dataclass(frozen=True)
class Phase:
    """Steps ``[start_step, end_step)`` (0-based step indices) trained at these sizes."""

    name: PhaseName
    start_step: int
    end_step: int
    global_crops_size: int
    local_crops_size: int
    batch_size_per_rank: int

    @property
    def crops(self) -> tuple[int, int, int]:
        """What the data pipeline depends on: (global px, local px, batch per rank)."""
        return self.global_crops_size, self.local_crops_size, self.batch_size_per_rank

    def describe(self) -> str:
        return (
            f"{self.name} phase, steps {self.start_step + 1}-{self.end_step}: global crops "
            f"{self.global_crops_size} px, local crops {self.local_crops_size} px, "
            f"{self.batch_size_per_rank} images per process"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def plan_phases(cfg: TrainConfig, world_size: int = 1) -> list[Phase]:
    """The run's phases in step order (one when the high-resolution phase is off) at ``world_size``
    processes (which sets the images per process when ``optim.global_batch_size`` is given)."""
    total = cfg.optim.total_steps
    n_high = cfg.high_res.num_steps(total)
    base = Phase(
        "base", 0, total - n_high, cfg.crops.global_crops_size, cfg.crops.local_crops_size,
        cfg.rank_batch_size(world_size),
    )
    if n_high == 0:
        return [base]
    hr = cfg.high_res
    high = Phase(
        "high_res",
        base.end_step,
        total,
        hr.global_crops_size,
        hr.local_crops_size if hr.local_crops_size is not None else cfg.crops.local_crops_size,
        _high_res_rank_batch(cfg, world_size) or base.batch_size_per_rank,
    )
    return [base, high]


def _high_res_rank_batch(cfg: TrainConfig, world_size: int) -> int | None:
    """Images per process in the high-resolution phase when the config sets its own batch."""
    hr = cfg.high_res
    if hr.global_batch_size is not None:
        return cfg.split_batch(hr.global_batch_size, world_size, "high_res.global_batch_size")
    return hr.batch_size_per_rank


def phase_at(phases: list[Phase], step: int) -> Phase:
    """The phase of 0-based step index ``step`` (steps past the end belong to the last phase)."""
    for phase in phases:
        if step < phase.end_step:
            return phase
    return phases[-1]


def check_resumed_phase(recorded: dict | None, expected: Phase, checkpoint_uri: str) -> None:
    """Refuse to resume when the config no longer puts the checkpoint's last step where it was
    trained (a run would otherwise silently change resolution mid-phase)."""
    if recorded is None:
        return
    keys = ("name", "global_crops_size", "local_crops_size")
    if any(recorded.get(k) != getattr(expected, k) for k in keys):
        was = ", ".join(f"{k}={recorded.get(k)}" for k in keys)
        now = ", ".join(f"{k}={getattr(expected, k)}" for k in keys)
        raise ValueError(
            f"{checkpoint_uri} was written in the {recorded.get('name')} phase ({was}); this config puts that step "
            f"in the {expected.name} phase ({now}). Restore high_res (and crops) as they were, or train into a new run."
        )

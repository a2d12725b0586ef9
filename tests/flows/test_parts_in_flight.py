"""map_parts keeps at most the runner's max_parts_in_flight parts submitted, whatever the part count."""
from __future__ import annotations

import threading
import time

import pytest
from prefect import flow

from flows.runner import RunnerConfig, parts_in_flight, use_task_runner
from flows.stages import StageFailed, map_parts

pytestmark = pytest.mark.usefixtures("prefect_backend")


class Gauge:
    def __init__(self) -> None:
        self.lock, self.now, self.peak, self.seen = threading.Lock(), 0, 0, []

    def run(self, part: int) -> dict:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(0.05)
        with self.lock:
            self.now -= 1
            self.seen.append(part)
        if part == 7:
            raise ValueError("part 7 is bad")
        return {"part": part}


def test_parts_in_flight_are_bounded_and_every_part_runs_and_reports():
    gauge = Gauge()

    @flow
    def stage_of_many_parts():
        with use_task_runner(RunnerConfig(max_workers=8, max_parts_in_flight=3)):
            return map_parts("demo", list(range(12)), gauge.run, part_retries=0)

    with pytest.raises(StageFailed, match=r"1 of 12 parts failed.*\n  7: ValueError: part 7 is bad"):
        stage_of_many_parts()
    assert sorted(gauge.seen) == list(range(12))
    assert 2 <= gauge.peak <= 3, gauge.peak


def test_the_default_bound_follows_the_runners_slots():
    assert parts_in_flight(RunnerConfig(max_workers=4)) == 8
    assert parts_in_flight(RunnerConfig(kind="dask", n_workers=3, threads_per_worker=2)) == 12
    assert parts_in_flight(RunnerConfig(kind="ray", n_workers=5)) == 10
    assert parts_in_flight(RunnerConfig(kind="dask", max_parts_in_flight=1)) == 1

"""The weekly refresh of curate-lvd/lvd-142m: registered inactive by `prefect deploy`, activated it
schedules runs on Sundays 03:00 UTC with the deployment's parameters; a bad parameter is refused by
the server with the field named."""
from __future__ import annotations

import time
from datetime import datetime

import pytest

from flows.deployments import WEEKLY_REFRESH

pytestmark = pytest.mark.slow
PRODUCTION = "curate-lvd/lvd-142m"


def _scheduled_runs(stack, deployment_id: str) -> list[dict]:
    return stack.post("/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}},
                                            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})


def test_activating_the_weekly_refresh_schedules_sunday_runs(stack):
    dep = stack.deployment(PRODUCTION)
    (schedule,) = dep["schedules"]
    assert schedule["schedule"]["cron"] == WEEKLY_REFRESH["cron"] and schedule["active"] is False
    assert _scheduled_runs(stack, dep["id"]) == []

    status, _ = stack.request("PATCH", f"/deployments/{dep['id']}/schedules/{schedule['id']}", {"active": True})
    assert status == 204
    try:
        deadline = time.monotonic() + 90  # the scheduler service loops every 5 s in the test stack
        runs = []
        while time.monotonic() < deadline and not runs:
            runs = _scheduled_runs(stack, dep["id"])
            time.sleep(1)
        assert runs, f"the scheduler created no run (server log: {stack.log_tail('server.log', 1500)})"
        for run in runs:
            start = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00"))
            assert (start.weekday(), start.hour, start.minute) == (6, 3, 0), start
            assert run["parameters"] == dep["parameters"]
            assert run["auto_scheduled"] is True
    finally:
        stack.request("PATCH", f"/deployments/{dep['id']}/schedules/{schedule['id']}", {"active": False})
    # paused again: the runs it had scheduled are withdrawn
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _scheduled_runs(stack, dep["id"]):
        time.sleep(1)
    assert _scheduled_runs(stack, dep["id"]) == []


@pytest.mark.parametrize("cfg, field", [
    ({"crawl": {"max_concurrency": 0}}, "max_concurrency"),
    ({"dataset": "../escape"}, "dataset"),
    ({"crawl": {"srcset": "smallest"}}, "srcset"),
])
def test_bad_parameters_are_refused_with_the_field_named(stack, cfg, field):
    dep = stack.deployment(PRODUCTION)
    before = len(stack.post("/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}}))
    status, body = stack.request("POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"cfg": cfg}})
    assert status in (409, 422), (status, body)
    assert field in str(body), body
    assert len(stack.post("/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}})) == before

"""A team's use of the stack: runs that name only what they change, settings the worker's environment
provides, and a scheduled refresh over a glob of WARC files on S3.

* `prefect deployment run curate-lvd/cpu-tiny --params '{"cfg": {<a few fields>}, "overrides": [...]}'` with
  no storage root: the partial cfg lays over the deployment's preset, the overrides apply on top, and the
  dataset lands under the worker's LVD_ROOT
  (an S3 root reached through the worker's LVD_S3_ENDPOINT_URL and AWS_* keys), nothing locally.
* A deployment set up like curate-lvd/lvd-142m (inputs: a `**` glob over WARC files under an S3 prefix,
  a schedule, version `auto` refreshing `latest`): the first fired run builds from the files there; the
  next fired run, after new WARC files arrived, crawls those files only.
"""
from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from flows.config import CurateConfig
from flows.deployments import scheduled_refresh
from storage.commit import CONFIG_FILE, read_commit, read_latest, stage_uri
from storage.tables import read_table
from storage.uri import join, read_bytes
from storage.versions import INPUTS_STAGE, read_inputs
from tasks.crawl.records import RECORDS_SCHEMA
from tasks.crawl.stage import RECORDS_FILE
from tests.deploy.conftest import CPU_TINY
from tests.support.prefect_stack import REPO, prefect_cli

pytestmark = pytest.mark.slow
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
LEAN = ["dedup.hash_method=phash", "safety.nsfw.enabled=false", "safety.faces.enabled=false"]


def _dotted(key: str, value) -> str:
    """One CLI-style override; JSON is YAML, so lists and mappings pass as they are."""
    return f"{key}={json.dumps(value)}"


def _stage_config(root: str, dataset: str, version: str, stage: str) -> dict:
    return json.loads(read_bytes(join(stage_uri(root, dataset, version, stage), CONFIG_FILE)))


def _page_rows(root: str, dataset: str, version: str) -> list[dict]:
    records = join(stage_uri(root, dataset, version, "crawl"), RECORDS_FILE)
    return [r for r in read_table(records, schema=RECORDS_SCHEMA).to_pylist() if r["kind"] == "page"]


def test_a_run_naming_only_changes_uses_the_preset_and_the_workers_root(stack, demo, s3_env, tmp_path):
    """No storage root, a partial `cfg` and dotted overrides (`--params`): the partial cfg lays over the
    deployment's preset section by section, the overrides apply on top, and the data lands under LVD_ROOT.
    (Prefect itself replaces a top-level parameter whole: the run's `cfg` is only what it named.)"""
    web = demo.server.web
    warc = web.write_warc(tmp_path / "two-pages.warc.gz", web.pages[:2])
    version = f"overrides-{int(time.time())}"
    preset = stack.deployment(CPU_TINY)["parameters"]["cfg"]
    assert "storage" not in preset and "inputs" not in preset
    partial = {"version": version, "inputs": [str(warc)],
               "crawl": {"pages_per_part": 1, **demo.server.crawl_settings()},
               "dedup": {"eval_sets": demo.cfg.dedup.eval_sets}}
    overrides = [_dotted("retrieve.queries", [q.model_dump(mode="json") for q in demo.cfg.retrieve.queries]),
                 *LEAN]
    out = prefect_cli(stack.env, "deployment", "run", CPU_TINY, "--params",
                      json.dumps({"cfg": partial, "overrides": overrides}))
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
    run = stack.wait_state(run_id, FINAL, timeout=300)
    assert run["state"]["type"] == "COMPLETED", stack.log_tail("worker-lvd-cpu.log")
    assert run["parameters"] == {"cfg": partial, "overrides": overrides}

    root, dataset = stack.worker_env["LVD_ROOT"], preset["dataset"]
    assert root.startswith("s3://") and read_latest(root, dataset) == version
    crawl = _stage_config(root, dataset, version, "crawl")
    assert crawl["pages_per_part"] == 1  # named in the partial cfg
    assert crawl["resolve"] == demo.server.crawl_settings()["resolve"]
    for key in ("max_samples_per_shard", "max_concurrency", "max_per_host", "decode_workers"):
        assert crawl[key] == preset["crawl"][key], key  # the preset's, not the model's defaults
    dedup = _stage_config(root, dataset, version, "dedup")
    assert dedup["hash_method"] == "phash"  # an override
    assert dedup["copy_threshold"] == preset["dedup"]["copy_threshold"]  # the preset's, beside a named field
    assert read_commit(stage_uri(root, dataset, version, "shards"))["counts"]["samples"] > 0
    assert {r["url"] for r in _page_rows(root, dataset, version)} == set(web.pages[:2])
    # the flow runs in the project directory: nothing of this version went to a local default root
    assert not (REPO / "lvd-data" / dataset / version).exists()


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _runs(stack, deployment_id: str, states: list[str]) -> list[dict]:
    runs = stack.post("/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}},
                                            "flow_runs": {"state": {"type": {"any_": states}}}})
    return sorted(runs, key=lambda r: r["expected_start_time"])


def _wait_finished(stack, deployment_id: str, n: int, timeout: float) -> dict:
    """The deployment's n-th finished run (by expected start), once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = _runs(stack, deployment_id, sorted(FINAL))
        if len(done) >= n:
            return done[n - 1]
        time.sleep(1)
    raise TimeoutError(f"no finished run #{n} after {timeout:.0f} s:\n{stack.log_tail('worker-lvd-cpu.log')}")


def _weekly_like(stack, demo, name: str, glob: str, first_run: datetime) -> dict:
    """curate-lvd/lvd-142m's shape (same flow, pool, pull steps and schema; a scheduled refresh over a WARC
    glob) on the cpu-tiny preset pointed at the demo web, every hour from ``first_run``."""
    prod = stack.deployment("curate-lvd/lvd-142m")
    assert prod["parameters"]["cfg"]["inputs"][0].endswith("**/*.warc.gz")
    assert prod["parameters"]["cfg"]["version"] == "auto" and prod["schedules"]
    from lvd.demo import demo_config

    cfg = demo_config("cpu-tiny", ["dataset=lvd-weekly", "crawl.pages_per_part=1", *LEAN], demo.server,
                      demo.server.web).curate()
    cfg = scheduled_refresh(CurateConfig.model_validate({**cfg.model_dump(mode="json", exclude_defaults=True),
                                                         "inputs": [glob]}))
    params = {"cfg": cfg.model_dump(mode="json", exclude_defaults=True)}
    assert "storage" not in params["cfg"]  # lands under the worker's LVD_ROOT
    body = {key: prod[key] for key in ("flow_id", "entrypoint", "path", "pull_steps", "work_pool_name",
                                       "work_queue_name", "parameter_openapi_schema", "enforce_parameter_schema",
                                       "job_variables", "tags")}
    body.update(name=name, parameters=params, schedules=[{
        "active": True,
        "schedule": {"interval": 3600, "anchor_date": first_run.isoformat(), "timezone": "UTC"}}])
    return stack.post("/deployments/", body)


def test_scheduled_refresh_over_a_warc_glob_crawls_only_new_files(stack, demo, s3_env, tmp_path):
    web, bucket = demo.server.web, demo.bucket
    s3 = stack.s3.client()
    prefix = f"crawl-{int(time.time())}"
    glob = f"s3://{bucket}/{prefix}/**/*.warc.gz"

    def publish(day: str, pages: list[str]) -> str:
        key = f"{prefix}/{day}/part-000.warc.gz"  # the same file name in each day's folder
        s3.upload_file(str(web.write_warc(tmp_path / f"{day}.warc.gz", pages)), bucket, key)
        return f"s3://{bucket}/{key}"

    first = publish("2026-11-29", web.pages[0:2])
    dep = _weekly_like(stack, demo, f"weekly-{prefix}", glob, datetime.now(timezone.utc) + timedelta(seconds=10))
    try:
        run1 = _wait_finished(stack, dep["id"], 1, timeout=300)
        assert run1["state"]["type"] == "COMPLETED", stack.log_tail("worker-lvd-cpu.log")
        assert run1["auto_scheduled"] is True
        root, dataset = stack.worker_env["LVD_ROOT"], "lvd-weekly"
        v1 = read_latest(root, dataset)
        assert [r["uri"] for r in read_inputs(stage_uri(root, dataset, v1, INPUTS_STAGE))] == [first]
        assert {(r["url"], r["page"]) for r in _page_rows(root, dataset, v1)} == {(u, first) for u in web.pages[0:2]}

        second = publish("2026-12-06", web.pages[2:4])
        # the scheduler's next run is an hour away: bring it forward instead of waiting
        nxt = _runs(stack, dep["id"], ["SCHEDULED"])[0]
        assert nxt["auto_scheduled"] is True and _utc(nxt["expected_start_time"]) > _utc(run1["expected_start_time"])
        stack.post(f"/flow_runs/{nxt['id']}/set_state", {"force": True, "state": {
            "type": "SCHEDULED", "state_details": {"scheduled_time": datetime.now(timezone.utc).isoformat()}}})
        run2 = _wait_finished(stack, dep["id"], 2, timeout=300)
        assert run2["id"] == nxt["id"] and run2["state"]["type"] == "COMPLETED", stack.log_tail("worker-lvd-cpu.log")
        v2 = read_latest(root, dataset)
        assert v2 != v1
        inputs = read_inputs(stage_uri(root, dataset, v2, INPUTS_STAGE))
        assert [(r["version"], r["uri"]) for r in inputs] == [(v1, first), (v2, second)]
        assert read_commit(stage_uri(root, dataset, v2, INPUTS_STAGE))["extra"]["parent"] == v1
        pages = _page_rows(root, dataset, v2)
        assert {(r["url"], r["page"]) for r in pages} == {(u, second) for u in web.pages[2:4]}
        assert read_commit(stage_uri(root, dataset, v2, "shards"))["counts"]["samples"] > 0
        assert not (REPO / "lvd-data" / dataset).exists()
    finally:
        stack.request("DELETE", f"/deployments/{dep['id']}")

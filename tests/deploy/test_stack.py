"""The deployment stack without containers: PostgreSQL, a Prefect server on it, SeaweedFS and a process
worker. `prefect deploy --all` registers every deployment, curate-lvd/cpu-tiny commits every stage into
the bucket (manifests matching the commits, a stage-count table and inline pictures as artifacts), and a
Prefect server restart in the middle of a run loses nothing."""
from __future__ import annotations

import hashlib
import json
import tarfile
import time

import pytest

from flows.deployments import DEPLOYMENTS
from storage.commit import COMMIT_FILE, read_commit, stage_uri
from storage.shards import read_manifest
from storage.uri import exists, join, open_input, walk_files
from tests.deploy.conftest import CPU_TINY

pytestmark = pytest.mark.slow
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def shard_images(shard_url: str) -> list[str]:
    """sha256 of every picture in a tar shard, sorted (the samples, whatever their order)."""
    with open_input(shard_url) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        return sorted(hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar
                      if m.isfile() and not m.name.endswith(".json"))


def stage_outputs(root: str, dataset: str, version: str) -> dict:
    """Per stage: the committed counts and, where the stage has shards, each shard's name, sample count
    and the sha256 of every picture. (Shard bytes and sample keys follow the order in which fetches
    finished, so a shard's own sha256 differs between two identical runs while every picture is the same.)"""
    out = {}
    version_uri = join(root, dataset, version)
    stages = sorted(p.split("/")[0] for p in walk_files(version_uri) if p.endswith("/" + COMMIT_FILE))
    assert stages, f"nothing committed under {version_uri}"
    for stage in stages:
        uri = stage_uri(root, dataset, version, stage)
        entry = {"counts": read_commit(uri)["counts"]}
        if exists(join(uri, "manifest.parquet")):
            entry["shards"] = sorted((r["name"], r["nsamples"], shard_images(r["url"]))
                                     for r in read_manifest(uri).to_pylist())
        out[stage] = entry
    return out


def test_deploy_registers_every_deployment(stack):
    """Every deployment of prefect.yaml (kept equal to flows/deployments.py by tests/flows) is registered
    with its pool, parameters and schedules."""
    registered = {d["id"]: d for d in stack.post("/deployments/filter", {})}
    declared = stack.declared["deployments"]
    assert len(registered) == len(declared)
    for dep in declared:
        flow = next(d.flow for d in DEPLOYMENTS if d.entrypoint == dep["entrypoint"])
        got = stack.deployment(f"{flow}/{dep['name']}")
        assert got["work_pool_name"] == dep["work_pool"]["name"]
        assert got["parameters"] == dep["parameters"]
        assert [s["schedule"].get("cron") for s in got["schedules"]] == [s["cron"] for s in dep["schedules"]]
    # init.sh ends with `lvd doctor`: API, database, pools and the bucket were all fine
    assert "ready" in stack.init_output.splitlines()[-1], stack.init_output[-2000:]
    print("stack start-up:", {k: round(v, 1) for k, v in stack.timings.items()})


def _wait_for_progress(stack, run_id: str, timeout: float = 240) -> None:
    """Until the run has finished at least one task: the server then goes down in the middle of it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = stack.post("/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [run_id]}}})
        if any(t["state"]["type"] == "COMPLETED" for t in tasks):
            return
        assert stack.flow_run(run_id)["state"]["type"] not in FINAL, "the run ended before the restart"
        time.sleep(0.5)
    raise TimeoutError("no task finished")


def test_cpu_tiny_lands_in_s3_and_survives_a_server_restart(stack, demo, baseline_run, s3_env):
    root = demo.cfg.storage.root
    baseline = stage_outputs(root, demo.cfg.dataset, "baseline")
    assert baseline["crawl"]["counts"]["samples"] > 0 and baseline["shards"]["shards"]
    assert root.startswith("s3://")
    crawl_uri = stage_uri(root, demo.cfg.dataset, "baseline", "crawl")
    assert sum(read_manifest(crawl_uri).column("nsamples").to_pylist()) == baseline["crawl"]["counts"]["samples"]
    artifacts = stack.artifacts(baseline_run)
    counts = next(a for a in artifacts if a["type"] == "table" and a["key"].endswith("-counts"))
    assert "samples" in json.dumps(counts["data"])
    pictures = [a for a in artifacts if a["type"] == "markdown" and "data:image/png;base64," in (a["data"] or "")]
    assert pictures, "the curation report publishes inline pictures"

    run_id = stack.run_deployment(CPU_TINY, demo.params(version="restarted"))
    _wait_for_progress(stack, run_id)
    stack.stop_server()
    stack.timings["server_restart_s"] = stack.start_server()
    stack.ensure_worker()
    run = stack.wait_state(run_id, FINAL, timeout=300)
    if run["state"]["type"] != "COMPLETED":
        # The run lost its server for too long: retry the same run; finished parts are reused.
        stack.post(f"/flow_runs/{run_id}/set_state", {"state": {"type": "SCHEDULED"}, "force": True})
        run = stack.wait_state(run_id, FINAL, timeout=300)
    assert run["state"]["type"] == "COMPLETED", stack.log_tail("worker-lvd-cpu.log")
    assert stage_outputs(root, demo.cfg.dataset, "restarted") == baseline
    print("stack timings:", {k: round(v, 1) for k, v in stack.timings.items()})

"""curate-lvd as a real deployment: Prefect server, process worker, `prefect deploy --all`,
`prefect deployment run curate-lvd/cpu-tiny`, artifacts committed into an S3 bucket."""
import json
import re

import pytest

from flows.deployments import CPU_POOL, GPU_POOL
from storage.commit import read_commit, stage_uri
from storage.shards import read_manifest
from lvd.demo_web import DemoWeb, build_demo_web, serve_demo_web
from tests.support.prefect_stack import prefect_cli, prefect_server, process_worker, wait_flow_run

pytestmark = pytest.mark.slow


def _api_post(env: dict, path: str, body: dict) -> list:
    import urllib.request

    req = urllib.request.Request(f"{env['PREFECT_API_URL']}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def test_deployment_run_commits_to_s3(tmp_path, s3_server, s3_root):
    from lvd.demo import demo_config

    web_dir = tmp_path / "web"
    web = build_demo_web(web_dir, n_images=30, seed=2)
    with prefect_server(tmp_path / "prefect-home", tmp_path / "server.log") as (api_url, env):
        env.update(s3_server.env())
        for pool in (CPU_POOL, GPU_POOL):
            prefect_cli(env, "work-pool", "create", pool, "--type", "process")
        out = prefect_cli(env, "deploy", "--all")
        assert "curate-lvd/cpu-tiny" in out and "curate-lvd/lvd-142m" in out
        with serve_demo_web(web_dir) as server, process_worker(env, CPU_POOL, tmp_path / "worker.log"):
            # 30 pictures are too few to train a PCA hash: pHash for this small web.
            cfg = demo_config("cpu-tiny", [f"storage.root={s3_root}", "dedup.hash_method=phash"], server,
                              DemoWeb.load(web_dir)).curate()
            params = json.dumps({"cfg": cfg.model_dump(mode="json")})
            out = prefect_cli(env, "deployment", "run", "curate-lvd/cpu-tiny", "--params", params)
            run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
            state = wait_flow_run(env, run_id, timeout=480)
        worker_log = (tmp_path / "worker.log").read_text(errors="replace")
        assert state == "COMPLETED", worker_log[-4000:]
        artifacts = _api_post(env, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    crawl_uri = stage_uri(s3_root, cfg.dataset, cfg.version, "crawl")
    commit = read_commit(crawl_uri)
    assert crawl_uri.startswith("s3://") and commit["counts"]["samples"] > 0
    assert sum(read_manifest(crawl_uri).column("nsamples").to_pylist()) == commit["counts"]["samples"]
    kinds = {a["type"] for a in artifacts}
    assert {"table", "markdown"} <= kinds, artifacts
    counts = next(a for a in artifacts if a["type"] == "table" and a["key"].endswith("-counts"))
    assert "samples" in json.dumps(counts["data"])
    pictures = [a for a in artifacts if a["type"] == "markdown" and "data:image/png;base64," in (a["data"] or "")]
    assert pictures, "the curation report publishes inline pictures"

"""One deployment stack (Postgres, Prefect server, SeaweedFS, process worker) for every test in this
folder: it is set up the way deploy/compose.yaml sets up the containers, through deploy/init.sh.

Flow runs that several tests need (an uninterrupted cpu-tiny run) are made once and shared.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flows.deployments import CPU_POOL
from tests.support.lvd_stack import LvdStack
from tests.support.prefect_stack import REPO

CPU_TINY = "curate-lvd/cpu-tiny"


@dataclass
class Demo:
    """The demo web served on 127.0.0.1 and the cpu-tiny config that crawls it into the stack's bucket."""

    server: object
    bucket: str
    cfg: object  # CurateConfig

    def params(self, **changes) -> dict:
        return {"cfg": self.cfg.model_copy(update=changes).model_dump(mode="json")}


def run_init(stack: LvdStack, root: str) -> subprocess.CompletedProcess:
    """deploy/init.sh as the compose `init` service runs it: pools, bucket, deployments, doctor."""
    env = dict(stack.env, LVD_ROOT=root, LVD_PROJECT_DIR=str(REPO),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["sh", str(REPO / "deploy" / "init.sh")], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="session")
def stack(s3_server, tmp_path_factory):
    stack = LvdStack(tmp_path_factory.mktemp("stack"), s3_server)
    try:
        stack.start()
        t = time.monotonic()
        bucket = f"lvd-stack-{os.getpid()}"
        stack.declared = yaml.safe_load((REPO / "prefect.yaml").read_text())
        root = f"s3://{bucket}/curated"
        init = run_init(stack, root)
        assert init.returncode == 0, f"deploy/init.sh failed:\n{init.stdout[-3000:]}\n{init.stderr[-3000:]}"
        stack.timings["init_deploy_s"] = time.monotonic() - t
        stack.bucket, stack.init_output = bucket, init.stdout
        stack.worker_env["LVD_ROOT"] = root  # as compose's x-lvd-env gives every worker
        stack.timings["worker_online_s"] = stack.start_worker(CPU_POOL)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def demo(stack, tmp_path_factory):
    from lvd.demo import demo_config
    from lvd.demo_web import DemoWeb, build_demo_web, serve_demo_web

    web_dir = tmp_path_factory.mktemp("demo-web")
    build_demo_web(web_dir, n_images=60, seed=3)
    with serve_demo_web(web_dir) as server:
        root = f"s3://{stack.bucket}/curated"
        cfg = demo_config("cpu-tiny", [f"storage.root={root}"], server, DemoWeb.load(web_dir)).curate()
        yield Demo(server, stack.bucket, cfg)


@pytest.fixture(scope="session")
def finished_runs():
    """version -> flow run id of completed cpu-tiny runs, so tests can compare against them."""
    return {}


@pytest.fixture(scope="session")
def baseline_run(stack, demo, finished_runs):
    """An uninterrupted cpu-tiny run (version `baseline`), with the time it took from submission."""
    t = time.monotonic()
    run_id = stack.run_deployment(CPU_TINY, demo.params(version="baseline"))
    run = stack.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, timeout=300)
    assert run["state"]["type"] == "COMPLETED", stack.log_tail(f"worker-{CPU_POOL}.log")
    stack.timings.setdefault("first_flow_run_s", time.monotonic() - t)
    finished_runs["baseline"] = run_id
    return run_id

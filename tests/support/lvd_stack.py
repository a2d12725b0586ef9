"""The deployment stack of deploy/compose.yaml without containers: PostgreSQL, a Prefect server on
it, SeaweedFS as the S3 store and process workers, all on 127.0.0.1.

The server can be stopped and started again on the same port and database (a restart mid-flow),
and the start-up time of each part is recorded for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from flows.deployments import CPU_POOL, GPU_POOL
from tests.support.postgres import PostgresServer
from tests.support.prefect_stack import PREFECT, REPO, free_port, prefect_cli, prefect_env, stop, wait_healthy
from tests.support.s3_server import SeaweedS3

# Short loops so a test sees schedules, late runs and new work within seconds, not minutes.
FAST_LOOPS = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "5",
    "PREFECT_WORKER_QUERY_SECONDS": "2",
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "10",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "true",
}


@dataclass
class LvdStack:
    """One stack for a test module; `start()` brings up Postgres, S3 and the Prefect server."""

    workdir: Path
    s3: SeaweedS3
    pg: PostgresServer = field(default_factory=PostgresServer)
    port: int = field(default_factory=free_port)
    timings: dict[str, float] = field(default_factory=dict)
    server: subprocess.Popen | None = None
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    # What compose gives every worker beyond the stack's env (LVD_ROOT: the dataset root runs default to).
    worker_env: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a client, worker or flow run of this stack sees (API, database, S3)."""
        return prefect_env(
            self.workdir / "prefect-home", self.api_url,
            PREFECT_UI_API_URL=self.api_url,
            PREFECT_API_DATABASE_CONNECTION_URL=self.pg.url,
            **FAST_LOOPS, **self.s3.env(),
        )

    def start(self) -> "LvdStack":
        self.workdir.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        self.pg.start()
        self.timings["postgres_s"] = time.monotonic() - t
        self.timings["prefect_server_s"] = self.start_server()
        return self

    def start_server(self) -> float:
        """Start (or restart) the Prefect server on the same port and database; return seconds to healthy."""
        t = time.monotonic()
        log = open(self.workdir / "server.log", "ab")
        self.server = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--analytics-off"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        log.close()
        wait_healthy(self.api_url, timeout=120, proc=self.server)
        return time.monotonic() - t

    def stop_server(self) -> None:
        if self.server is not None:
            stop(self.server)
            self.server = None

    def create_pools(self) -> None:
        for pool in (CPU_POOL, GPU_POOL):
            prefect_cli(self.env, "work-pool", "create", pool, "--type", "process", "--overwrite")

    def start_worker(self, pool: str = CPU_POOL) -> float:
        """Start a process worker and return the seconds until the server lists it as online."""
        t = time.monotonic()
        log = open(self.workdir / f"worker-{pool}.log", "ab")
        self.workers[pool] = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--name", f"{pool}-test"],
            env={**self.env, **self.worker_env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        log.close()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.workers[pool].poll() is not None:
                raise RuntimeError(f"worker for {pool} exited: {self.log_tail(f'worker-{pool}.log')}")
            if any(w["status"] == "ONLINE" for w in self.post(f"/work_pools/{pool}/workers/filter", {})):
                return time.monotonic() - t
            time.sleep(0.5)
        raise TimeoutError(f"worker for {pool} not online after 90 s")

    def ensure_worker(self, pool: str = CPU_POOL) -> None:
        """Start the pool's worker again if it exited (what `restart: unless-stopped` does in compose)."""
        proc = self.workers.get(pool)
        if proc is None or proc.poll() is not None:
            self.start_worker(pool)

    def stop(self) -> None:
        for proc in self.workers.values():
            stop(proc)
        self.workers.clear()
        self.stop_server()
        self.pg.destroy()

    def log_tail(self, name: str, n: int = 4000) -> str:
        try:
            return (self.workdir / name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # --- the REST API, as any client would use it ---------------------------------------------
    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.api_url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode(errors="replace")

    def get(self, path: str) -> object:
        status, body = self.request("GET", path)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: dict) -> object:
        status, out = self.request("POST", path, body)
        assert status in (200, 201), (path, status, out)
        return out

    def deployment(self, name: str) -> dict:
        return self.get(f"/deployments/name/{name}")

    def flow_run(self, run_id: str) -> dict:
        return self.get(f"/flow_runs/{run_id}")

    def run_deployment(self, name: str, parameters: dict) -> str:
        """Create a flow run of `curate-lvd/cpu-tiny`-style names, as `prefect deployment run` does."""
        dep = self.deployment(name)
        run = self.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters})
        return run["id"]

    def wait_state(self, run_id: str, states: set[str], timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        run = None
        while time.monotonic() < deadline:
            try:
                run = self.flow_run(run_id)
                if (run.get("state") or {}).get("type") in states:
                    return run
            except (OSError, AssertionError):
                pass  # the server may be restarting
            time.sleep(1)
        state = (run or {}).get("state") or {}
        raise TimeoutError(f"flow run {run_id} still {state.get('type')} after {timeout:.0f}s; worker log:\n"
                           + self.log_tail(f"worker-{CPU_POOL}.log"))

    def artifacts(self, run_id: str) -> list[dict]:
        return self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})

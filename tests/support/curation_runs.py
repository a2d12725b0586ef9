"""curate-lvd on the demo web with a chosen task runner, here or inside a network namespace.

`curate_demo` runs the flow once against a fresh demo web server (its once-failing hosts fail
again) and returns the run's counts and `tests.support.published` checksums. Run as a module,
it does the same for several runners in one process after starting its own Prefect server, which
is how a runner that listens on every interface (Ray) runs inside `unshare -n` with loopback alone:

    python -m tests.support.curation_runs --web DIR --out result.json ray=file:///tmp/a thread=file:///tmp/b
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support.published import published_checksums

REPO = Path(__file__).resolve().parents[2]


def curate_config(server, web, root: str, runner):
    """The cpu-tiny curate config on the served demo web, at two pages per crawl part."""
    from flows.config import PipelineConfig
    from lvd.config import validate
    from lvd.demo import demo_config

    cfg = demo_config("cpu-tiny", [f"storage.root={root}"], server, web)
    data = cfg.model_dump(mode="json")
    data.update(inputs=[str(web.pages_txt)], runner=runner.model_dump())
    data["crawl"]["pages_per_part"] = 2
    return validate(PipelineConfig, data).curate()


def curate_demo(demo_web_dir: Path, root: str, runner) -> dict:
    """{"counts": per stage, "checksums": published files, "seconds": the flow's wall time}."""
    from flows.curate_lvd import curate_lvd
    from lvd.demo_web import DemoWeb, serve_demo_web

    web = DemoWeb.load(demo_web_dir)
    with serve_demo_web(demo_web_dir) as server:
        cfg = curate_config(server, web, root, runner)
        started = time.monotonic()
        result = curate_lvd(cfg)
        seconds = time.monotonic() - started
    return {"counts": {s: v["counts"] for s, v in result["stages"].items()},
            "checksums": published_checksums(root, cfg.dataset, cfg.version), "seconds": round(seconds, 1)}


def unshare_refusal() -> str | None:
    """Why a network namespace cannot be made here, or None when it can."""
    try:
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "the unshare command is not installed"
    if probe.returncode != 0:
        return f"unshare -n is not permitted here: {probe.stderr.strip() or probe.returncode}"
    return None


def curate_in_loopback_namespace(demo_web_dir: Path, runs: dict[str, str], workdir: Path,
                                 timeout: float = 600) -> dict[str, dict]:
    """Run `curate_demo` for each {runner kind: root} inside a new network namespace holding only
    loopback, with its own Prefect server and demo web; returns {kind: curate_demo result}."""
    out = workdir / "namespace-result.json"
    log = workdir / "namespace.log"
    command = " ".join([
        "ip link set lo up &&", "exec", sys.executable, "-m", "tests.support.curation_runs",
        "--web", str(demo_web_dir), "--out", str(out), *(f"{kind}={root}" for kind, root in runs.items()),
    ])
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", RAY_USAGE_STATS_ENABLED="0")
    for name in ("PREFECT_API_URL", "RAY_ADDRESS"):  # nothing outside the namespace is reachable from it
        env.pop(name, None)
    with open(log, "w") as log_file:
        proc = subprocess.run(["unshare", "-n", "bash", "-c", command], cwd=REPO, env=env, stdout=log_file,
                              stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"curate-lvd inside the namespace exited {proc.returncode}:\n"
                           + log.read_text()[-6000:])
    return json.loads(out.read_text())


def drain_to_server(timeout: float = 20) -> None:
    """Send the logs and events still queued while the server is up; left for interpreter exit,
    they retry against a stopped server for a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout)
    EventsWorker.drain_all(timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    from flows.runner import RunnerConfig
    from tests.support.prefect_stack import free_port, prefect_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--web", required=True, type=Path, help="a built demo web")
    parser.add_argument("--out", required=True, type=Path, help="JSON file for the results")
    parser.add_argument("runs", nargs="+", help="KIND=ROOT: a runner kind and the dataset root of its run")
    args = parser.parse_args(argv)
    runs = dict(r.split("=", 1) for r in args.runs)
    results = {}
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    os.environ.update(PREFECT_API_URL=api_url)  # the flow and every cluster worker report here
    # The flow's imports (torch, onnxruntime, OpenCV) load while the server starts.
    importing = threading.Thread(target=importlib.import_module, args=("flows.curate_lvd",), daemon=True)
    importing.start()
    with tempfile.TemporaryDirectory(prefix="lvd-prefect-") as home:
        with prefect_server(Path(home), Path(home) / "server.log", port=port):
            importing.join()
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: api_url}):
                for kind, root in runs.items():
                    results[kind] = curate_demo(args.web, root, RunnerConfig(kind=kind))
            drain_to_server()
    args.out.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real Prefect server (SQLite under a temporary PREFECT_HOME) on 127.0.0.1, and the prefect CLI against it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_env(home: Path, api_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="INFO",
        LVD_PROJECT_DIR=str(REPO),
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env


def wait_healthy(api_url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"Prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Prefect server at {api_url} not healthy after {timeout:.0f}s")


def stop(proc: subprocess.Popen, first: int = signal.SIGINT, grace: float = 15.0) -> None:
    """Prefect workers ignore SIGTERM, so interrupt first, then kill."""
    if proc.poll() is not None:
        return
    proc.send_signal(first)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextmanager
def prefect_server(home: Path, log: Path, port: int | None = None, **env_extra: str):
    """Yield (api_url, env) for a freshly started server; stop it afterwards."""
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(home, api_url, PREFECT_UI_API_URL=api_url, **env_extra)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )
    try:
        wait_healthy(api_url, proc=proc)
        yield api_url, env
    finally:
        stop(proc)


def prefect_cli(env: dict[str, str], *args: str, timeout: float = 180.0) -> str:
    """Run the prefect CLI against the test server; fail with its output on error."""
    result = subprocess.run(
        [PREFECT, "--no-prompt", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout

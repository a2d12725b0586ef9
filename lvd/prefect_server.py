"""Which Prefect server an `lvd` run reports to, and a local one that outlives single runs.

A run with no server configured makes Prefect start a temporary one and stop it at exit: tens of
seconds and CPU-seconds per run on a small machine. So before a flow starts, when
PREFECT_API_URL is unset, lvd looks for a local server that answers /api/health (the one
`lvd server start` recorded, then the well-known local address) and uses it. Only when none
answers does Prefect's temporary server start, on a port from LVD_PREFECT_PORTS if that is set.

    LVD_HOME               where `lvd server start` records its server (default ~/.lvd)
    LVD_PREFECT_LOCAL_URL  the well-known local address probed second (default http://127.0.0.1:4200/api)
    LVD_PREFECT_REUSE=0    never probe: every run gets a temporary server
    LVD_PREFECT_PORTS      port range of the temporary server, e.g. 8300-8399 (default Prefect's 8000-8999)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

DEFAULT_LOCAL_URL = "http://127.0.0.1:4200/api"
PROBE_TIMEOUT_S = 1.0


@dataclass
class ChosenServer:
    api_url: str | None
    source: str  # "PREFECT_API_URL", "lvd server start", "local address" or "temporary"


def lvd_home() -> Path:
    return Path(os.environ.get("LVD_HOME") or Path.home() / ".lvd")


def state_path() -> Path:
    return lvd_home() / "prefect-server.json"


def read_state() -> dict | None:
    try:
        return json.loads(state_path().read_text())
    except (OSError, ValueError):
        return None


def answers(api_url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A Prefect API that returns 200 on /health (a closed port refuses at once, so this is cheap)."""
    try:
        return httpx.get(api_url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def parse_port_range(text: str) -> range:
    """'8300-8399' (inclusive) or a single port."""
    low, _, high = text.strip().partition("-")
    try:
        start, stop = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"LVD_PREFECT_PORTS={text!r}: expected LOW-HIGH, e.g. 8300-8399") from None
    if not 1024 <= start <= stop <= 65535:
        raise ValueError(f"LVD_PREFECT_PORTS={text!r}: expected 1024 <= LOW <= HIGH <= 65535")
    return range(start, stop + 1)


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def local_candidates() -> list[tuple[str, str]]:
    candidates = []
    state = read_state()
    if state and state.get("api_url"):
        candidates.append((state["api_url"], "lvd server start"))
    local = os.environ.get("LVD_PREFECT_LOCAL_URL", DEFAULT_LOCAL_URL)
    if local and all(local != url for url, _ in candidates):
        candidates.append((local, "local address"))
    return candidates


def _use_api_url(api_url: str) -> None:
    """Point this process (and the subprocesses it starts) at api_url, even if Prefect is imported."""
    os.environ["PREFECT_API_URL"] = api_url
    import prefect.context

    prefect.context.refresh_global_settings_context()


def _limit_temporary_ports(ports: range) -> None:
    # Prefect 3.8 draws the temporary server's port from this class attribute and has no setting for it.
    from prefect.server.api.server import SubprocessASGIServer

    SubprocessASGIServer._port_range = ports


def choose_server(log=print) -> ChosenServer:
    """Use the configured server, else a local one that answers, else let Prefect start a temporary one."""
    configured = configured_api_url()
    if configured:
        return ChosenServer(configured, "PREFECT_API_URL")
    if os.environ.get("LVD_PREFECT_REUSE", "1") != "0":
        for api_url, source in local_candidates():
            if answers(api_url):
                _use_api_url(api_url)
                log(f"lvd: using the Prefect server at {api_url} ({source})")
                return ChosenServer(api_url, source)
    ports = os.environ.get("LVD_PREFECT_PORTS")
    if ports:
        _limit_temporary_ports(parse_port_range(ports))
    where = f" on a port in {ports}" if ports else ""
    log(f"lvd: no Prefect server answers; Prefect starts a temporary one{where} "
        "(`lvd server start` keeps one for every run)")
    return ChosenServer(None, "temporary")


# --- lvd server start | stop | status ----------------------------------------------------------
def start_server(host: str = "127.0.0.1", port: int = 4200, timeout: float = 180.0) -> dict:
    """Start `prefect server start` in the background, wait until it answers, record it under LVD_HOME."""
    state = read_state()
    if state and answers(state["api_url"]):
        return {**state, "started": False}
    api_url = f"http://{host}:{port}/api"
    if answers(api_url):
        raise RuntimeError(f"another server already answers at {api_url}; lvd runs use it without `lvd server start`")
    home = lvd_home()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "prefect-server.log"
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_UI_API_URL=api_url)
    env.pop("PREFECT_API_URL", None)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host,
                                 "--port", str(port)], stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not answers(api_url):
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            _stop_group(proc.pid)
            raise RuntimeError(f"prefect server did not answer at {api_url} within {timeout:.0f} s; see {log_path}")
        time.sleep(0.5)
    state = {"api_url": api_url, "pid": proc.pid, "log": str(log_path)}
    state_path().write_text(json.dumps(state))
    return {**state, "started": True}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a child of this process that exited is a zombie until reaped
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _stop_group(pid: int, grace: float = 15.0) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the session `start_server` created (server + uvicorn)."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.2)


def stop_server() -> dict | None:
    """Stop the server `lvd server start` recorded; None when there is none."""
    state = read_state()
    if not state:
        return None
    if state.get("pid") and _alive(state["pid"]):
        _stop_group(state["pid"])
    state_path().unlink(missing_ok=True)
    return state


def server_status() -> dict:
    """What a run would use now, without starting anything."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        return {"api_url": configured, "source": "PREFECT_API_URL", "answers": answers(configured)}
    for api_url, source in local_candidates():
        if answers(api_url):
            return {"api_url": api_url, "source": source, "answers": True}
    return {"api_url": None, "source": "temporary", "answers": False,
            "ports": os.environ.get("LVD_PREFECT_PORTS", "8000-8999")}

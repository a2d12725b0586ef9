"""Flow commands reuse a local Prefect server that answers, and bound the temporary server's port."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from lvd.prefect_server import parse_port_range

CHOOSE = ("import json; from lvd.prefect_server import choose_server; "
          "from prefect.server.api.server import SubprocessASGIServer as S; "
          "c = choose_server(); print(json.dumps([c.api_url, c.source, S._port_range.start, S._port_range.stop]))")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(LVD_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               LVD_PREFECT_LOCAL_URL=f"http://127.0.0.1:{_free_port()}/api", **extra)
    return env


def _choose(env) -> list:
    out = subprocess.run([sys.executable, "-c", CHOOSE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_port_range_parsing():
    assert parse_port_range("8300-8399") == range(8300, 8400)
    assert parse_port_range("8371") == range(8371, 8372)
    with pytest.raises(ValueError):
        parse_port_range("99-80")


def test_no_server_bounds_the_temporary_port(tmp_path):
    assert _choose(_env(tmp_path, LVD_PREFECT_PORTS="8300-8309")) == [None, "temporary", 8300, 8310]


@pytest.mark.slow
def test_recorded_server_is_reused_and_stopped(tmp_path):
    env = _env(tmp_path)
    port = _free_port()
    lvd = [sys.executable, "-m", "lvd.cli", "server"]
    subprocess.run([*lvd, "start", "--port", str(port)], env=env, check=True, capture_output=True, timeout=240)
    try:
        api_url = f"http://127.0.0.1:{port}/api"
        assert _choose(env)[:2] == [api_url, "lvd server start"]
        status = subprocess.run([*lvd, "status"], env=env, capture_output=True, text=True)
        assert status.returncode == 0 and json.loads(status.stdout)["api_url"] == api_url
    finally:
        subprocess.run([*lvd, "stop"], env=env, check=True, capture_output=True, timeout=60)
    assert subprocess.run([*lvd, "status"], env=env, capture_output=True).returncode == 1

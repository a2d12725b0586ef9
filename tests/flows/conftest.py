"""One embedded Prefect backend for every flow test in this folder (starting one costs ~10 s)."""
import os

import pytest


@pytest.fixture(scope="session")
def prefect_backend():
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def demo_web_dir(tmp_path_factory):
    from lvd.demo_web import build_demo_web

    root = tmp_path_factory.mktemp("demo-web")
    build_demo_web(root, n_images=60, seed=1)
    return root


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real Prefect server for one module, that the test, its flows and every Dask worker report
    to (workers inherit the environment). Logs and events are sent before the server stops, so no
    later test waits on a server that is gone."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.support.curation_runs import drain_to_server
    from tests.support.prefect_stack import prefect_server

    home = tmp_path_factory.mktemp("prefect-home")
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    with prefect_server(home, home / "server.log") as (api_url, _env):
        os.environ.update(PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false")
        try:
            with temporary_settings({PREFECT_API_URL: api_url}):
                yield api_url
            drain_to_server()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

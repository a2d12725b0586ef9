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
    from tasks.crawl.demo_web import build_demo_web

    root = tmp_path_factory.mktemp("demo-web")
    build_demo_web(root, n_images=60, seed=1)
    return root

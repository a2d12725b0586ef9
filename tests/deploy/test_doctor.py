"""`lvd doctor` against the real stack, up and with each part broken: it names what is missing."""
from __future__ import annotations

import time

import pytest

from flows.deployments import CPU_POOL
from lvd.cli import main
from tests.support.prefect_stack import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def doctor(stack, monkeypatch, capsys):
    """Run `lvd doctor ARGS` with the stack's environment (plus changes); return (exit code, screen)."""
    def run(*args: str, **env: str) -> tuple[int, str]:
        for name, value in {**stack.env, **env}.items():
            monkeypatch.setenv(name, value)
        if "--api-url" not in args:
            args = ("--api-url", stack.api_url, *args)
        code = main(["doctor", "--timeout", "3", "--root", f"s3://{stack.bucket}/curated", *args])
        return code, capsys.readouterr().out
    return run


def test_ready_stack(doctor):
    code, out = doctor("--pool", CPU_POOL)
    assert code == 0, out
    assert out.splitlines()[-1] == "ready"
    assert f"work pool {CPU_POOL}" in out and "workers online: lvd-cpu-test" in out


def test_missing_pool_and_refused_credentials(doctor):
    code, out = doctor("--pool", CPU_POOL, "--pool", "lvd-nowhere", AWS_SECRET_ACCESS_KEY="not-the-secret")
    assert code == 1
    assert "FAIL  work pool lvd-nowhere" in out and "missing" in out and "prefect work-pool create lvd-nowhere" in out
    assert "S3 refused the credentials" in out
    assert out.splitlines()[-1].startswith("2 problem(s)")


def test_pool_without_worker_and_missing_bucket(doctor):
    code, out = doctor("--pool", "lvd-gpu", "--root", "s3://no-such-bucket-here/x")
    assert code == 1
    assert "no worker online" in out and "bucket 'no-such-bucket-here' does not exist" in out


def test_unreachable_api(doctor):
    t = time.monotonic()
    code, out = doctor("--api-url", f"http://127.0.0.1:{free_port()}/api")
    assert code == 1 and time.monotonic() - t < 30
    assert "unreachable" in out and "not checked" in out


def test_gpu_asked_for_but_absent(doctor):
    code, out = doctor("--config", "cpu-tiny", "--pool", CPU_POOL, "embed.device=cuda")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    assert code == 1 and "config asks for device=cuda but torch sees no GPU" in out


def test_postgres_down(stack, doctor):
    stack.pg.stop()
    try:
        code, out = doctor("--pool", CPU_POOL)
        assert code == 1
        assert "FAIL  Prefect database" in out and "PostgreSQL" in out
    finally:
        stack.pg.start()
    deadline = time.monotonic() + 60
    while stack.request("GET", "/ready")[0] != 200:
        assert time.monotonic() < deadline, "the server did not reconnect to PostgreSQL"
        time.sleep(1)
    assert doctor("--pool", CPU_POOL)[0] == 0

"""Shared fixtures: a real S3-compatible server (SeaweedFS) on 127.0.0.1 for the whole session.

* ``s3_server``: the running server (``.endpoint``, ``.access_key``, ``.secret_key``, ``.client()``).
* ``s3_env``: sets LVD_S3_ENDPOINT_URL / AWS_* for one test, so ``storage`` finds the server.
* ``s3_bucket``: a fresh, empty bucket for one test (env set).
* ``s3_root``: ``"s3://<fresh bucket>/lvd"`` with the env set: pass it wherever a dataset root goes.
* ``storage_root``: parametrised over a ``file://`` tmp dir and ``s3_root``; a test using it runs twice.
"""

from __future__ import annotations

import pytest

from tests.support.s3_server import SeaweedS3


def start_s3_server(tries: int = 3) -> SeaweedS3:
    """Start SeaweedFS, retrying with fresh ports if another process took one meanwhile."""
    for attempt in range(tries):
        try:
            return SeaweedS3().start()
        except RuntimeError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def s3_server():
    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    import storage.uri

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    storage.uri.configure(None)
    storage.uri.clear_fs_cache()
    yield s3_server
    storage.uri.clear_fs_cache()


@pytest.fixture
def s3_bucket(s3_env):
    return s3_env.new_bucket()


@pytest.fixture
def s3_root(s3_bucket):
    return f"s3://{s3_bucket}/lvd"


@pytest.fixture
def file_root(tmp_path):
    return f"file://{tmp_path / 'lvd-data'}"


@pytest.fixture(params=["file", "s3"])
def storage_root(request):
    return request.getfixturevalue("file_root" if request.param == "file" else "s3_root")

"""Storage against a real S3 server behind a fault-injecting proxy: every fault ends in a
successful retry or a clear error, and never in a committed partial stage."""

import socket
import threading
import time

import pytest

from storage.commit import (
    StageNotCommitted,
    begin_stage,
    commit_stage,
    is_committed,
    mark_part_done,
    read_commit,
    stage_uri,
)
from storage.shards import ShardInfo, ShardWriter, iter_samples, manifest_shards, verify_shard, write_manifest
from storage.uri import StorageError, StorageUnavailable, clear_fs_cache, exists, join, read_bytes, write_bytes_atomic
from tests.support.fault_proxy import FaultProxy
from tests.support.s3_server import free_port

MiB = 2**20


def _point_at(monkeypatch, endpoint, **settings):
    monkeypatch.setenv("LVD_S3_ENDPOINT_URL", endpoint)
    # generous timeouts: injected faults answer at once, and a loaded machine must not add retries
    values = {"MAX_ATTEMPTS": "3", "CONNECT_TIMEOUT": "5", "READ_TIMEOUT": "30", "MULTIPART_CHUNKSIZE": str(5 * MiB)}
    values.update(settings)
    for name, value in values.items():
        monkeypatch.setenv(f"LVD_S3_{name}", value)
    clear_fs_cache()


@pytest.fixture
def proxy(s3_env, monkeypatch):
    p = FaultProxy(s3_env.endpoint).start()
    _point_at(monkeypatch, p.endpoint)
    yield p
    p.stop()


@pytest.fixture
def root(s3_env, proxy):
    return f"s3://{s3_env.new_bucket()}/lvd"


def _object_exists(server, uri):
    bucket, key = uri[len("s3://"):].split("/", 1)
    listed = server.client().list_objects_v2(Bucket=bucket, Prefix=key)
    return any(o["Key"] == key for o in listed.get("Contents", []))


def test_transient_5xx_is_retried(root, proxy):
    uri = join(root, "a.bin")
    proxy.fail(method="PUT", status=503, times=2)
    write_bytes_atomic(uri, b"payload")
    proxy.fail(method="GET", status=500, times=1)
    assert read_bytes(uri) == b"payload"
    outcomes = [r.outcome for r in proxy.requests("PUT")]
    assert outcomes == ["injected 503", "injected 503", "forwarded 200"]


def test_persistent_5xx_is_a_clear_failure(s3_env, root, proxy, monkeypatch):
    _point_at(monkeypatch, proxy.endpoint, MAX_ATTEMPTS="2")
    uri = join(root, "never.bin")
    proxy.fail(method="PUT", status=500, times=-1)
    with pytest.raises(StorageError, match=f"writing {uri}.*{proxy.endpoint}"):
        write_bytes_atomic(uri, b"x")
    assert 2 <= len(proxy.requests("PUT")) <= 12  # bounded retries
    assert not _object_exists(s3_env, uri)


def test_connection_dropped_mid_upload_is_retried(root, proxy):
    uri = join(root, "b.bin")
    data = bytes(range(256)) * 4096  # 1 MiB
    proxy.drop(method="PUT", after_bytes=64 * 1024, times=1)
    write_bytes_atomic(uri, data)
    assert read_bytes(uri) == data
    assert [r.outcome for r in proxy.requests("PUT")] == ["dropped", "forwarded 200"]


def _big_shard(uri, nsamples=6, size=2 * MiB):
    with ShardWriter(uri) as w:
        for i in range(nsamples):
            w.write(f"{i:06d}", {"bin": bytes([i]) * size, "json": {"i": i}})
    return w.close()


def test_large_shard_goes_up_as_multipart_and_survives_a_dropped_part(root, proxy):
    uri = join(root, "shards", "lvd-000000.tar")
    proxy.drop(method="PUT", query="partNumber=2", after_bytes=MiB, times=1)
    info = _big_shard(uri)
    assert info.nbytes > 12 * MiB
    assert proxy.requests("POST", query="uploads")  # multipart started
    parts = {r.query for r in proxy.requests("PUT", query="partNumber") if r.outcome.startswith("forwarded")}
    assert len(parts) >= 3
    assert [r.outcome for r in proxy.requests("PUT", query="partNumber=2(&|$)")] == ["dropped", "forwarded 200"]
    verify_shard(info)


def test_failed_multipart_upload_publishes_nothing(s3_env, root, proxy, monkeypatch):
    _point_at(monkeypatch, proxy.endpoint, MAX_ATTEMPTS="2")
    uri = join(root, "shards", "lvd-000001.tar")
    proxy.fail(method="PUT", query="partNumber=2(&|$)", status=500, times=-1)
    with pytest.raises(StorageError, match="lvd-000001.tar"):
        _big_shard(uri)
    assert not _object_exists(s3_env, uri)
    assert proxy.requests("DELETE", query="uploadId")  # the multipart upload was aborted
    bucket = uri[len("s3://"):].split("/", 1)[0]
    assert not s3_env.client().list_multipart_uploads(Bucket=bucket).get("Uploads")


def _run_stage(stage, nshards=3):
    """A miniature stage: one shard per part, part markers, manifest, commit marker last."""
    plan = begin_stage(stage, stage="shards", config_digest="cfg", input_digest="in")
    if plan.skip:
        return plan.commit
    infos = []
    for i in range(nshards):
        part = f"lvd-{i:06d}"
        if plan.is_done(part):
            infos.append(ShardInfo(**plan.done[part]))
            continue
        with ShardWriter(join(stage, f"{part}.tar")) as w:
            for j in range(4):
                w.write(f"{i:03d}{j:06d}", {"jpg": bytes([i, j]) * 500, "json": {"shard": i}})
        info = w.close()
        mark_part_done(stage, part, {"url": info.url, "nsamples": info.nsamples, "nbytes": info.nbytes,
                                     "sha256": info.sha256, "md5": info.md5})
        infos.append(info)
    write_manifest(stage, infos)
    return commit_stage(stage, stage="shards", config_digest="cfg", input_digest="in",
                        counts={"samples": sum(i.nsamples for i in infos)},
                        require_parts=[f"lvd-{i:06d}" for i in range(nshards)])


def test_interrupted_stage_never_commits_and_resumes(root, proxy, monkeypatch):
    _point_at(monkeypatch, proxy.endpoint, MAX_ATTEMPTS="2")
    stage = stage_uri(root, "lvd", "v1", "shards")
    proxy.fail(method="PUT", path="lvd-000002.tar", status=500, times=-1)
    with pytest.raises(StorageError, match="lvd-000002.tar"):
        _run_stage(stage)
    assert not is_committed(stage)
    with pytest.raises(StageNotCommitted):
        read_commit(stage)
    proxy.clear()
    before = len(proxy.requests("PUT"))
    commit = _run_stage(stage)
    tar_puts = {r.path.rsplit("/", 1)[-1] for r in proxy.requests("PUT")[before:] if r.path.endswith(".tar")}
    assert tar_puts == {"lvd-000002.tar"}  # finished parts were reused, not rewritten
    assert commit["counts"] == {"samples": 12} and is_committed(stage, "cfg", "in")
    for info in manifest_shards(stage):
        verify_shard(info)
    assert _run_stage(stage) == read_commit(stage)  # a rerun of a committed stage is a skip


def test_failed_commit_marker_leaves_stage_uncommitted(root, proxy, monkeypatch):
    _point_at(monkeypatch, proxy.endpoint, MAX_ATTEMPTS="2")
    stage = stage_uri(root, "lvd", "v1", "dedup")
    write_bytes_atomic(join(stage, "keep.parquet"), b"rows")
    proxy.fail(method="PUT", path="_COMMITTED.json", status=500, times=-1)
    with pytest.raises(StorageError, match="_COMMITTED.json"):
        commit_stage(stage, stage="dedup", config_digest="c", input_digest="i", counts={})
    proxy.clear()
    assert not is_committed(stage)


def test_unreachable_endpoint_is_a_clear_error(s3_env, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"
    _point_at(monkeypatch, endpoint, MAX_ATTEMPTS="2", CONNECT_TIMEOUT="1", READ_TIMEOUT="1")
    for action in (lambda: read_bytes("s3://bucket/x"), lambda: write_bytes_atomic("s3://bucket/x", b"1"),
                   lambda: exists("s3://bucket/x")):
        start = time.monotonic()
        with pytest.raises(StorageUnavailable, match=f"S3 endpoint {endpoint} unreachable"):
            action()
        assert time.monotonic() - start < 15


@pytest.mark.slow
def test_stalled_endpoint_times_out(s3_env, monkeypatch):
    """A server that accepts connections and never answers (nor reads uploads)."""
    srv = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept():
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    endpoint = f"http://127.0.0.1:{srv.getsockname()[1]}"
    _point_at(monkeypatch, endpoint, MAX_ATTEMPTS="2", CONNECT_TIMEOUT="1", READ_TIMEOUT="1",
              MIN_TRANSFER_RATE=str(8 * MiB))
    try:
        for action in (lambda: read_bytes("s3://bucket/x"),
                       lambda: write_bytes_atomic("s3://bucket/x", b"1" * (8 * MiB))):
            start = time.monotonic()
            with pytest.raises(StorageUnavailable, match=endpoint):
                action()
            assert time.monotonic() - start < 40
    finally:
        srv.close()
        for c in held:
            c.close()


def test_wrong_credentials_are_refused_clearly(s3_env, root, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    clear_fs_cache()
    with pytest.raises((PermissionError, StorageError), match="s3://"):
        write_bytes_atomic(join(root, "x"), b"1")


def test_connection_cut_mid_download_is_retried_or_refused(root, proxy):
    uri = join(root, "shards", "lvd-000000.tar")
    info = _big_shard(uri, nsamples=3, size=MiB)
    proxy.truncate(method="GET", after_bytes=100_000, times=1)
    assert [k for k, _ in iter_samples(uri, expected_sha256=info.sha256)] == ["000000", "000001", "000002"]
    assert proxy.requests("GET")[0].outcome == "truncated"
    proxy.truncate(method="GET", after_bytes=100_000, times=-1)
    with pytest.raises(StorageError, match="lvd-000000.tar"):
        list(iter_samples(uri))

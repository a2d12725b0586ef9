"""What killed writers leave behind never outlives the next run: open S3 multipart uploads are
aborted (on any interruption, and when a stage begins), local temp files are removed when a stage
begins and before it commits, and an unwritable root fails before any work."""

import asyncio
import os

import pytest

from storage.commit import begin_stage, commit_stage, stage_uri
from storage.uri import (
    RootNotWritable,
    _local_temp_name,
    check_root_writable,
    exists,
    join,
    put_file_atomic,
    read_bytes,
    write_bytes_atomic,
)

MiB = 2**20


@pytest.fixture
def small_parts(s3_env, monkeypatch):
    """5 MiB parts (S3's minimum), so a 16 MiB file is a 4-part multipart upload."""
    import storage.uri

    monkeypatch.setenv("LVD_S3_MULTIPART_CHUNKSIZE", str(5 * MiB))
    storage.uri.clear_fs_cache()
    return s3_env


def _uploads(server, bucket: str, prefix: str = "") -> list[dict]:
    return server.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads") or []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, asyncio.CancelledError, RuntimeError])
def test_interrupted_multipart_upload_is_aborted(small_parts, s3_root, tmp_path, interrupt):
    bucket = s3_root[len("s3://"):].split("/", 1)[0]
    local = tmp_path / "big.tar"
    local.write_bytes(os.urandom(16 * MiB))
    uri = join(s3_root, "shards", "lvd-000000.tar")
    seen = []

    def progress(sent: int) -> None:
        seen.append(sent)
        raise interrupt("stopped after the first part")

    with pytest.raises(interrupt):
        put_file_atomic(str(local), uri, progress=progress)
    assert seen == [5 * MiB]  # the upload really was under way
    assert not _uploads(small_parts, bucket)
    assert not exists(uri)
    put_file_atomic(str(local), uri)  # the rerun publishes the whole object and leaves nothing open
    assert read_bytes(uri) == local.read_bytes()
    assert not _uploads(small_parts, bucket)


def test_large_bytes_go_up_as_multipart(small_parts, s3_root):
    uri = join(s3_root, "blob.bin")
    data = os.urandom(11 * MiB)
    write_bytes_atomic(uri, data)
    assert read_bytes(uri) == data


def test_begin_stage_aborts_stale_multipart_uploads_under_its_prefix(small_parts, s3_root):
    bucket, prefix = s3_root[len("s3://"):].split("/", 1)
    stage = stage_uri(s3_root, "lvd", "v1", "shards")
    stage_key = stage[len(f"s3://{bucket}/"):]
    client = small_parts.client()

    def dangling(key: str) -> str:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1,
                           Body=b"x" * (5 * MiB))
        return upload["UploadId"]

    dangling(f"{stage_key}/lvd-000003.tar")
    other = f"{prefix}/lvd/v1/shards-other/lvd-000000.tar"  # a neighbour whose name starts the same
    dangling(other)
    assert len(_uploads(small_parts, bucket, stage_key + "/")) == 1

    plan = begin_stage(stage, stage="shards", config_digest="c", input_digest="i")
    assert not plan.skip
    assert not _uploads(small_parts, bucket, stage_key + "/")
    assert [u["Key"] for u in _uploads(small_parts, bucket)] == [other]


def test_temp_files_are_removed_when_a_stage_begins_and_before_it_commits(tmp_path):
    stage = stage_uri(f"file://{tmp_path}", "lvd", "v1", "crawl")
    path = stage[len("file://"):]
    os.makedirs(os.path.join(path, "sub"))
    # what writers killed mid-write leave: the project's temp name beside the final one
    early = _local_temp_name(os.path.join(path, "pool-000000.tar"))
    open(early, "wb").close()
    begin_stage(stage, stage="crawl", config_digest="c", input_digest="i")
    assert not os.path.exists(early)

    write_bytes_atomic(join(stage, "pool-000000.tar"), b"12345")
    late = [_local_temp_name(os.path.join(path, "pool-000001.tar")),
            _local_temp_name(os.path.join(path, "sub", "records.parquet"))]
    for name in late:
        with open(name, "wb") as f:
            f.write(b"x" * 1000)
    lookalike = os.path.join(path, "notes.tmp-1")  # not a temp name of ours: it stays and counts
    with open(lookalike, "wb") as f:
        f.write(b"kept")
    record = commit_stage(stage, stage="crawl", config_digest="c", input_digest="i", counts={})
    assert not any(os.path.exists(n) for n in late)
    assert os.path.exists(lookalike)
    leftovers = [n for _, _, files in os.walk(path) for n in files if ".tmp-" in n and n.startswith(".")]
    assert leftovers == []
    assert (record["files"], record["total_bytes"]) == (2, 5 + 4)


def test_local_put_file_atomic_fsyncs_before_rename(tmp_path, monkeypatch):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 100)
    dst = tmp_path / "out" / "dst.bin"
    order = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b))[1])
    put_file_atomic(str(src), str(dst))
    assert dst.read_bytes() == src.read_bytes()
    assert order[:2] == ["fsync", "replace"]
    assert os.listdir(dst.parent) == ["dst.bin"]


def test_unwritable_local_root_fails_fast_naming_root_and_reason(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"not a directory")  # fails for root too, unlike a chmod
    root = f"file://{blocker}/sub"
    with pytest.raises(RootNotWritable) as err:
        check_root_writable(root)
    message = str(err.value)
    assert root in message and "Not a directory" in message
    check_root_writable(f"file://{tmp_path}/fine/deeper")  # created, probed, left empty
    assert os.listdir(tmp_path / "fine" / "deeper") == []


def test_flow_storage_resolution_checks_the_root_first(tmp_path, monkeypatch):
    from flows.stages import use_storage
    from storage.config import StorageConfig

    # use_storage exports the settings into os.environ: record the originals so teardown restores them
    for name in StorageConfig().to_env():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("storage.uri._configured", None)
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"x")
    monkeypatch.setenv("LVD_ROOT", f"file://{blocker}/sub")
    with pytest.raises(RootNotWritable, match=f"file://{blocker}/sub.*Not a directory"):
        use_storage(StorageConfig(), check=True)
    # resolving settings outside a flow run (tests, the CLI) does not touch the store
    assert use_storage(StorageConfig()).root == f"file://{blocker}/sub"


def test_s3_root_probe(s3_env, s3_root, monkeypatch):
    import storage.uri

    check_root_writable(s3_root)
    bucket, prefix = s3_root[len("s3://"):].split("/", 1)
    assert not s3_env.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents")  # probe removed
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage.uri.clear_fs_cache()
    with pytest.raises(RootNotWritable, match=f"storage root {s3_root} at {s3_env.endpoint} is not writable"):
        check_root_writable(s3_root)

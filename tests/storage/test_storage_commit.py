import json

import pytest
from pydantic import BaseModel, ConfigDict

from storage.commit import (
    StageConflict,
    StageNotCommitted,
    begin_stage,
    commit_stage,
    config_digest,
    digest_of_commit,
    is_committed,
    mark_part_done,
    part_done,
    publish_latest,
    read_commit,
    read_latest,
    stage_uri,
)
from storage.uri import exists, join, read_bytes, write_bytes_atomic


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = 64
    threshold: float = 0.6


def test_config_digest_is_stable_and_sensitive():
    assert config_digest(_Cfg()) == config_digest({"threshold": 0.6, "k": 64})
    assert config_digest(_Cfg()) != config_digest(_Cfg(k=32))
    assert len(config_digest({})) == 64
    with pytest.raises(TypeError):
        config_digest([1, 2])
    with pytest.raises(TypeError, match="JSON"):
        config_digest({"x": object()})


def test_stage_uri_checks_names():
    assert stage_uri("s3://b/root", "lvd", "v1", "crawl") == "s3://b/root/lvd/v1/crawl"
    for bad in ("", "a/b", "..", " x"):
        with pytest.raises(ValueError, match="not a valid name"):
            stage_uri("file:///r", "lvd", bad, "crawl")


def test_reading_uncommitted_stage_is_a_clear_error(storage_root):
    uri = stage_uri(storage_root, "lvd", "v1", "dedup")
    write_bytes_atomic(join(uri, "keep.parquet"), b"half")  # files without a marker
    with pytest.raises(StageNotCommitted, match="dedup.*not committed"):
        read_commit(uri)
    with pytest.raises(StageNotCommitted):
        digest_of_commit(uri)
    assert not is_committed(uri)


def test_commit_records_and_digests(storage_root):
    uri = stage_uri(storage_root, "lvd", "v1", "crawl")
    write_bytes_atomic(join(uri, "pool-000000.tar"), b"x" * 100)
    mark_part_done(uri, "pool-000000", {"n": 3})
    rec = commit_stage(uri, stage="crawl", config_digest="c1", input_digest="i1", counts={"images": 3})
    assert rec["total_bytes"] == 100 and rec["files"] == 1 and rec["counts"] == {"images": 3}
    assert rec["code_version"]
    assert read_commit(uri) == rec
    assert is_committed(uri) and is_committed(uri, "c1", "i1")
    assert not is_committed(uri, "c2", "i1") and not is_committed(uri, "c1", "i2")
    d = digest_of_commit(uri)
    assert len(d) == 64
    # Recommitting the same content later (new time) keeps the digest; other content changes it.
    again = commit_stage(uri, stage="crawl", config_digest="c1", input_digest="i1", counts={"images": 3})
    assert again["committed_at"] >= rec["committed_at"] and digest_of_commit(uri) == d
    commit_stage(uri, stage="crawl", config_digest="c1", input_digest="i1", counts={"images": 4})
    assert digest_of_commit(uri) != d


def test_rerun_skips_resumes_or_refuses(storage_root):
    uri = stage_uri(storage_root, "lvd", "v1", "embed")
    plan = begin_stage(uri, stage="embed", config_digest="c", input_digest="i")
    assert not plan.skip and plan.done == {}
    mark_part_done(uri, "batch-0", {"rows": 10})
    assert part_done(uri, "batch-0") == {"rows": 10}
    assert part_done(uri, "batch-1") is None
    # interrupted before batch-1: the rerun reuses batch-0
    plan = begin_stage(uri, stage="embed", config_digest="c", input_digest="i")
    assert plan.done == {"batch-0": {"rows": 10}} and plan.is_done("batch-0") and not plan.is_done("batch-1")
    write_bytes_atomic(join(uri, "embeddings-000000.npy"), b"old")
    # a different config discards the old run's parts and files
    plan = begin_stage(uri, stage="embed", config_digest="c2", input_digest="i")
    assert plan.done == {} and part_done(uri, "batch-0") is None
    assert not exists(join(uri, "embeddings-000000.npy"))
    mark_part_done(uri, "batch-0", {"rows": 10})
    mark_part_done(uri, "batch-1", {"rows": 5})
    with pytest.raises(StageNotCommitted, match="1 of 3 parts"):
        commit_stage(uri, stage="embed", config_digest="c2", input_digest="i", counts={},
                     require_parts=["batch-0", "batch-1", "batch-2"])
    assert not is_committed(uri)
    commit_stage(uri, stage="embed", config_digest="c2", input_digest="i", counts={"rows": 15},
                 require_parts=["batch-0", "batch-1"])
    plan = begin_stage(uri, stage="embed", config_digest="c2", input_digest="i")
    assert plan.skip and plan.commit["counts"] == {"rows": 15}
    with pytest.raises(StageConflict, match="immutable"):
        begin_stage(uri, stage="embed", config_digest="c3", input_digest="i")


def test_latest_moves_only_after_all_stages_commit(storage_root):
    with pytest.raises(StageNotCommitted, match="no published version"):
        read_latest(storage_root, "lvd")
    for version in ("v1", "v2"):
        for stage in ("crawl", "dedup"):
            uri = stage_uri(storage_root, "lvd", version, stage)
            write_bytes_atomic(join(uri, "data.bin"), b"d")
            if (version, stage) != ("v2", "dedup"):
                commit_stage(uri, stage=stage, config_digest="c", input_digest="i", counts={})
    rec = publish_latest(storage_root, "lvd", "v1", ["crawl", "dedup"])
    assert read_latest(storage_root, "lvd") == "v1" and set(rec["stages"]) == {"crawl", "dedup"}
    with pytest.raises(StageNotCommitted, match="dedup"):
        publish_latest(storage_root, "lvd", "v2", ["crawl", "dedup"])
    assert read_latest(storage_root, "lvd") == "v1"
    commit_stage(stage_uri(storage_root, "lvd", "v2", "dedup"), stage="dedup", config_digest="c",
                 input_digest="i", counts={})
    publish_latest(storage_root, "lvd", "v2", ["crawl", "dedup"])
    assert read_latest(storage_root, "lvd") == "v2"
    assert json.loads(read_bytes(join(storage_root, "lvd", "latest")))["version"] == "v2"


def test_resolve_version_follows_latest(tmp_path):
    from storage.commit import resolve_version

    root = str(tmp_path)
    uri = stage_uri(root, "lvd", "v7", "crawl")
    commit_stage(uri, stage="crawl", config_digest="c", input_digest="i", counts={})
    publish_latest(root, "lvd", "v7", ["crawl"])
    assert resolve_version(root, "lvd", "latest") == "v7"
    assert resolve_version(root, "lvd", "v3") == "v3"
    with pytest.raises(ValueError):
        resolve_version(root, "lvd", "../x")

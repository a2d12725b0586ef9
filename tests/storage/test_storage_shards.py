import hashlib
import json
import os
import tarfile

import pyarrow as pa
import pytest

from storage.commit import StageNotCommitted, commit_stage
from storage.shards import (
    ShardInfo,
    ShardWriter,
    iter_samples,
    manifest_shards,
    read_manifest,
    verify_shard,
    wids_index_uri,
    write_manifest,
)
from storage.uri import exists, join, list_files, open_fs, read_bytes


def _samples(n, start=0, size=300):
    for i in range(start, start + n):
        yield f"{i:09d}", {"jpg": bytes([i % 251]) * (size + i), "json": {"url": f"http://x/{i}", "i": i}}


def _write(uri, samples):
    with ShardWriter(uri) as w:
        for key, fields in samples:
            w.write(key, fields)
    return w.close()


def test_shard_roundtrip_with_hashes(storage_root):
    uri = join(storage_root, "lvd", "v1", "shards", "lvd-000000.tar")
    info = _write(uri, _samples(5))
    data = read_bytes(uri)
    assert info == ShardInfo(uri, 5, len(data), hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
    got = list(iter_samples(uri, expected_sha256=info.sha256))
    assert [k for k, _ in got] == [f"{i:09d}" for i in range(5)]
    assert got[2][1]["jpg"] == bytes([2]) * 302
    assert json.loads(got[2][1]["json"]) == {"i": 2, "url": "http://x/2"}
    verify_shard(info)
    with pytest.raises(ValueError, match="does not match"):
        list(iter_samples(uri, expected_sha256="0" * 64))


def test_shard_bytes_are_deterministic(tmp_path):
    a = _write(str(tmp_path / "a.tar"), _samples(3))
    b = _write(str(tmp_path / "b.tar"), _samples(3))
    assert a.sha256 == b.sha256


def test_failed_writer_publishes_nothing(storage_root):
    uri = join(storage_root, "shards", "lvd-000001.tar")
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(uri) as w:
            w.write("000000001", {"jpg": b"x"})
            raise RuntimeError("boom")
    assert not exists(uri)
    assert list_files(join(storage_root, "shards")) == []
    if not storage_root.startswith("s3://"):
        _, path = open_fs(join(storage_root, "shards"))
        assert os.listdir(path) == []


def test_writer_rejects_bad_samples(tmp_path):
    with pytest.raises(ValueError, match=".tar"):
        ShardWriter(str(tmp_path / "x.zip"))
    w = ShardWriter(str(tmp_path / "x.tar"))
    w.write("a", {"jpg": b"1"})
    with pytest.raises(ValueError, match="duplicate"):
        w.write("a", {"jpg": b"2"})
    with pytest.raises(ValueError, match="without dots"):
        w.write("a.b", {"jpg": b"2"})
    with pytest.raises(ValueError, match="at least one"):
        w.write("c", {})
    with pytest.raises(ValueError, match="extension"):
        w.write("c", {"__key__": b"2"})
    with pytest.raises(TypeError, match="bytes, str or dict"):
        w.write("c", {"npy": [1, 2]})
    info = w.close()
    assert info.nsamples == 1
    with pytest.raises(ValueError, match="closed"):
        w.write("d", {"jpg": b"1"})


def test_reader_rejects_broken_shards(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ValueError, match="not a readable tar"):
        list(iter_samples(str(bad)))
    split = tmp_path / "split.tar"
    with tarfile.open(split, "w") as tar:
        for name in ("a.jpg", "b.jpg", "a.json"):
            import io

            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="split across"):
        list(iter_samples(str(split)))
    with pytest.raises(FileNotFoundError, match="missing.tar"):
        list(iter_samples(str(tmp_path / "missing.tar")))


def test_plain_webdataset_reads_shards(storage_root):
    import webdataset as wds

    stage = join(storage_root, "lvd", "v1", "shards")
    infos = [_write(join(stage, f"lvd-{i:06d}.tar"), _samples(4, start=4 * i)) for i in range(2)]
    ds = wds.WebDataset([i.url for i in infos], shardshuffle=False, empty_check=True)
    got = [(s["__key__"], s["jpg"], json.loads(s["json"])["i"]) for s in ds]
    assert [g[2] for g in got] == list(range(8))
    assert got[5][1] == bytes([5]) * 305


def test_manifest_and_wids_index(storage_root):
    stage = join(storage_root, "lvd", "v1", "shards")
    infos = [_write(join(stage, f"lvd-{i:06d}.tar"), _samples(3 + i, start=10 * i)) for i in range(3)]
    uri = write_manifest(stage, infos)
    assert uri == join(stage, "manifest.parquet")
    with pytest.raises(StageNotCommitted, match="not committed"):
        read_manifest(stage)
    table = read_manifest(stage, require_commit=False)
    commit_stage(stage, stage="shards", config_digest="c", input_digest="i", counts={"samples": 12})
    assert read_manifest(stage) == table
    assert isinstance(table, pa.Table)
    assert table.column("nsamples").to_pylist() == [3, 4, 5]
    assert table.column("name").to_pylist() == [f"lvd-{i:06d}.tar" for i in range(3)]
    assert manifest_shards(stage) == infos
    index = json.loads(read_bytes(wids_index_uri(stage)))
    assert index["wids_version"] == 1 and index["__kind__"] == "wids-shard-index-v1"
    assert [s["url"] for s in index["shardlist"]] == table.column("name").to_pylist()
    assert [s["filesize"] for s in index["shardlist"]] == [i.nbytes for i in infos]
    with pytest.raises(ValueError, match="at least one shard"):
        write_manifest(stage, [])
    with pytest.raises(ValueError, match="twice"):
        write_manifest(stage, [infos[0], infos[0]])


def test_wids_reads_the_index(tmp_path):
    import wids

    stage = str(tmp_path / "lvd" / "v1" / "shards")
    infos = [_write(join(stage, f"lvd-{i:06d}.tar"), _samples(3, start=3 * i)) for i in range(2)]
    write_manifest(stage, infos)
    commit_stage(stage, stage="shards", config_digest="c", input_digest="i", counts={})
    ds = wids.ShardListDataset(wids_index_uri(stage), cache_dir=str(tmp_path / "cache"), transformations=[])
    assert len(ds) == 6
    sample = ds[4]
    jpg = sample[".jpg"]
    assert (jpg.read() if hasattr(jpg, "read") else jpg) == bytes([4]) * 304
    assert sample["__key__"] == "000000004"
    meta = sample[".json"]
    meta = json.loads(meta.read() if hasattr(meta, "read") else meta)
    assert meta["i"] == 4


def test_stage_with_a_missing_or_changed_shard_cannot_commit(storage_root):
    from storage.uri import remove, write_bytes_atomic

    stage = join(storage_root, "lvd", "v1", "shards")
    infos = [_write(join(stage, f"lvd-{i:06d}.tar"), _samples(2, start=2 * i)) for i in range(3)]
    write_manifest(stage, infos)
    remove(infos[1].url)
    with pytest.raises(StageNotCommitted, match="lvd-000001.tar \\(missing"):
        commit_stage(stage, stage="shards", config_digest="c", input_digest="i", counts={})
    write_bytes_atomic(infos[1].url, b"short")
    with pytest.raises(StageNotCommitted, match="5 bytes"):
        commit_stage(stage, stage="shards", config_digest="c", input_digest="i", counts={})
    _write(infos[1].url, _samples(2, start=2))
    commit_stage(stage, stage="shards", config_digest="c", input_digest="i", counts={})

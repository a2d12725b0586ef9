import os

import pytest

from storage.config import StorageConfig
from storage.uri import (
    exists,
    file_size,
    join,
    list_files,
    open_fs,
    read_bytes,
    remove,
    walk_files,
    write_bytes_atomic,
)


def test_join_keeps_scheme_and_refuses_climbing():
    assert join("s3://b/p/", "x", "/y/") == "s3://b/p/x/y"
    assert join("file://./lvd-data", "ds") == "file://./lvd-data/ds"
    assert join("/tmp/a", "b") == "/tmp/a/b"
    with pytest.raises(ValueError, match="climb"):
        join("s3://b", "..")
    with pytest.raises(ValueError, match="empty"):
        join("s3://b", "")


def test_open_fs_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = open_fs("file://./lvd-data/x")
    assert path == str(tmp_path / "lvd-data" / "x")
    assert open_fs(str(tmp_path))[1] == str(tmp_path)
    assert open_fs(f"file://{tmp_path}")[1] == str(tmp_path)
    with pytest.raises(ValueError, match="unsupported"):
        open_fs("gs://bucket/x")
    with pytest.raises(ValueError, match="bucket"):
        open_fs("s3:///x")


def test_bytes_roundtrip_listing_and_delete(storage_root):
    a = join(storage_root, "d", "a.bin")
    b = join(storage_root, "d", "b.txt")
    deep = join(storage_root, "d", "sub", "c.bin")
    assert not exists(a)
    with pytest.raises(FileNotFoundError, match="a.bin"):
        read_bytes(a)
    write_bytes_atomic(a, b"alpha")
    write_bytes_atomic(b, b"beta")
    write_bytes_atomic(deep, b"gamma!")
    write_bytes_atomic(a, b"alpha2")  # overwrite replaces whole object
    assert read_bytes(a) == b"alpha2"
    assert exists(a) and exists(join(storage_root, "d"))
    assert list_files(join(storage_root, "d")) == [a, b]
    assert list_files(join(storage_root, "d"), suffix=".txt") == [b]
    assert list_files(join(storage_root, "missing")) == []
    assert walk_files(join(storage_root, "d")) == {"a.bin": 6, "b.txt": 4, "sub/c.bin": 6}
    assert file_size(deep) == 6
    remove(a)
    assert not exists(a)
    remove(join(storage_root, "d"), recursive=True)
    assert walk_files(join(storage_root, "d")) == {}


def test_write_refuses_non_bytes(storage_root):
    with pytest.raises(TypeError, match="bytes"):
        write_bytes_atomic(join(storage_root, "x"), "text")


def test_local_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out" / "f.bin"
    write_bytes_atomic(str(target), b"x" * 1000)
    assert os.listdir(target.parent) == ["f.bin"]


def test_config_from_env(monkeypatch):
    monkeypatch.setenv("LVD_S3_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("LVD_S3_MAX_ATTEMPTS", "2")
    cfg = StorageConfig.from_env()
    assert cfg.endpoint_url == "http://127.0.0.1:1" and cfg.max_attempts == 2
    assert StorageConfig.from_env(**cfg.to_env() and {}) == cfg
    with pytest.raises(ValueError):
        StorageConfig(max_attempts=0)
    with pytest.raises(ValueError):
        StorageConfig(bogus=1)


def test_configure_overrides_environment(s3_env, s3_root):
    from storage.uri import StorageUnavailable, configure, current_config
    from tests.support.s3_server import free_port

    write_bytes_atomic(join(s3_root, "x"), b"1")
    dead = f"http://127.0.0.1:{free_port()}"
    configure(StorageConfig(endpoint_url=dead, connect_timeout=1, max_attempts=1))
    try:
        assert current_config().endpoint_url == dead
        with pytest.raises(StorageUnavailable, match=dead):
            read_bytes(join(s3_root, "x"))
    finally:
        configure(None)
    assert read_bytes(join(s3_root, "x")) == b"1"


def test_plain_webdataset_open_of_missing_s3_shard_names_it(s3_root):
    import webdataset as wds

    import storage.shards  # noqa: F401  (registers the s3 scheme)

    with pytest.raises(FileNotFoundError, match="nope.tar"):
        wds.gopen(join(s3_root, "nope.tar"))


def test_credentials_from_a_profile_and_endpoint_from_aws_env(s3_env, s3_bucket, tmp_path, monkeypatch):
    from storage.uri import clear_fs_cache

    creds = tmp_path / "credentials"
    creds.write_text(
        f"[lvd-test]\naws_access_key_id = {s3_env.access_key}\naws_secret_access_key = {s3_env.secret_key}\n"
    )
    config = tmp_path / "config"
    config.write_text("[profile lvd-test]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "lvd-test")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("LVD_S3_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    clear_fs_cache()
    uri = f"s3://{s3_bucket}/profile/x.bin"
    write_bytes_atomic(uri, b"via profile")
    assert read_bytes(uri) == b"via profile"

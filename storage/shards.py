"""WebDataset tar shards on ``file://`` or ``s3://``, with sha256/md5, bytes and sample counts.

A shard is a plain tar whose members are ``{key}.{ext}``, the samples' members adjacent, so
``webdataset.WebDataset(url)`` and ``wids`` read it unchanged. Importing this module also
registers an ``s3`` scheme with webdataset's ``gopen``, so ``webdataset.WebDataset("s3://...")``
streams through the same configured S3 client (endpoint, credentials, timeouts, retries).

:class:`ShardWriter` writes to a hidden temp file (next to the target locally, in a local
spool for S3, under ``$LVD_SPOOL_DIR`` or the system temp dir) and only publishes on a
clean ``close``; S3 shards larger than twice the
multipart chunk size go up as a multipart upload that is aborted if any part fails.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from storage.commit import MANIFEST_FILE, read_commit
from storage.tables import SCHEMAS, read_table, write_table
from storage.uri import (
    _local_temp_name,
    basename,
    guard,
    join,
    open_fs,
    open_input,
    put_file_atomic,
    scheme_of,
    write_bytes_atomic,
)

WIDS_INDEX_FILE = "index.wids.json"
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-:/]+$")
_EXT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]+)$")


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records about one finished shard."""

    url: str
    nsamples: int
    nbytes: int
    sha256: str
    md5: str = ""


class _HashingWriter(io.RawIOBase):
    """Write-through file wrapper that counts bytes and hashes them on the way."""

    def __init__(self, raw):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.nbytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        self.raw.write(data)
        self.sha256.update(data)
        self.md5.update(data)
        self.nbytes += len(data)
        return len(data)


def shard_name(url: str) -> str:
    """A shard's one canonical name, which every stage keys its per-shard records by: the file name
    without ``.tar`` (``.../lvd-000003.tar`` -> ``lvd-000003``)."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return name[:-4] if name.endswith(".tar") else name


def _encode(uri: str, key: str, ext: str, value) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
    raise TypeError(f"{uri}: field {key}.{ext} is a {type(value).__name__}; use bytes, str or dict")


class ShardWriter:
    """Write one WebDataset shard; nothing appears at ``uri`` until :meth:`close` succeeds.

    Use as a context manager: a clean exit publishes the shard, an exception discards it.
    """

    def __init__(self, uri: str):
        if not uri.endswith(".tar"):
            raise ValueError(f"shard URI {uri!r} must end in .tar")
        self.uri = uri
        self._scheme = scheme_of(uri)
        _, path = open_fs(uri)
        if self._scheme == "file":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._tmp = _local_temp_name(path)
            self._path = path
        else:
            fd, self._tmp = tempfile.mkstemp(suffix=".tar", prefix="lvd-shard-", dir=os.environ.get("LVD_SPOOL_DIR"))
            os.close(fd)
            self._path = None
        self._file = open(self._tmp, "wb")
        self._hasher = _HashingWriter(self._file)
        self._tar = tarfile.open(fileobj=self._hasher, mode="w|", format=tarfile.PAX_FORMAT)
        self._keys: set[str] = set()
        self._info: ShardInfo | None = None
        self._closed = False

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def nsamples(self) -> int:
        return len(self._keys)

    @property
    def nbytes(self) -> int:
        """Bytes written so far (lets callers roll over to a new shard at a size limit)."""
        return self._hasher.nbytes

    def write(self, key: str, fields: dict[str, bytes | dict | str]) -> None:
        """Add one sample: ``fields`` maps extensions (``"jpg"``, ``"json"``) to content."""
        if self._closed:
            raise ValueError(f"{self.uri}: shard already closed")
        if not isinstance(key, str) or not _KEY_RE.match(key) or key.startswith("/") or "//" in key:
            raise ValueError(f"{self.uri}: sample key {key!r} must be non-empty [A-Za-z0-9_-:/] without dots")
        if key in self._keys:
            raise ValueError(f"{self.uri}: duplicate sample key {key!r}")
        if not isinstance(fields, dict) or not fields:
            raise ValueError(f"{self.uri}: sample {key!r} needs at least one field")
        members = []
        for ext, value in fields.items():
            if not isinstance(ext, str) or not _EXT_RE.match(ext):
                raise ValueError(f"{self.uri}: field name {ext!r} of sample {key!r} is not a valid extension")
            members.append((f"{key}.{ext}", _encode(self.uri, key, ext, value)))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._keys.add(key)

    def close(self) -> ShardInfo:
        """Finish the tar, publish it at ``uri`` and return its :class:`ShardInfo`."""
        if self._info is not None:
            return self._info
        if self._closed:
            raise ValueError(f"{self.uri}: shard was aborted")
        self._closed = True
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if self._scheme == "file":
                os.replace(self._tmp, self._path)
            else:
                put_file_atomic(self._tmp, self.uri)
        finally:
            self._discard_tmp()
        self._info = ShardInfo(
            url=self.uri,
            nsamples=len(self._keys),
            nbytes=self._hasher.nbytes,
            sha256=self._hasher.sha256.hexdigest(),
            md5=self._hasher.md5.hexdigest(),
        )
        return self._info

    def abort(self) -> None:
        """Drop everything written; ``uri`` is left as it was."""
        self._closed = True
        # keep tarfile from writing its end blocks into the discarded file when collected
        self._tar.closed = True
        self._tar.fileobj.closed = True
        self._discard_tmp()

    def _discard_tmp(self) -> None:
        if not self._file.closed:
            self._file.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)


class _HashingReader(io.RawIOBase):
    def __init__(self, raw):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.raw.read(len(buf))
        n = len(data)
        buf[:n] = data
        self.sha256.update(data)
        self.nbytes += n
        return n


def iter_samples(uri: str, expected_sha256: str | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream ``(key, {ext: bytes})`` from a shard, in file order.

    With ``expected_sha256`` the whole file is hashed and a mismatch raises after the last sample.
    """
    with open_input(uri) as raw:
        reader = _HashingReader(raw)
        stream = io.BufferedReader(reader, buffer_size=1 << 20)
        seen: set[str] = set()
        key, fields = None, {}
        with guard(uri, "reading shard"):
            try:
                tar = tarfile.open(fileobj=stream, mode="r|")
                for member in tar:
                    if not member.isfile():
                        continue
                    m = _MEMBER_RE.match(member.name)
                    if m is None:
                        raise ValueError(f"{uri}: tar member {member.name!r} is not named key.ext")
                    mkey, ext = m.group(1), m.group(2)
                    data = tar.extractfile(member).read()
                    if mkey != key:
                        if key is not None:
                            yield key, fields
                        if mkey in seen:
                            raise ValueError(f"{uri}: sample {mkey!r} is split across the shard")
                        seen.add(mkey)
                        key, fields = mkey, {}
                    if ext in fields:
                        raise ValueError(f"{uri}: sample {mkey!r} has two {ext!r} members")
                    fields[ext] = data
                if key is not None:
                    yield key, fields
                while stream.read(1 << 20):
                    pass
            except tarfile.TarError as exc:
                raise ValueError(f"{uri}: not a readable tar shard ({exc})") from exc
    if expected_sha256 is not None and reader.sha256.hexdigest() != expected_sha256:
        raise ValueError(
            f"{uri}: sha256 {reader.sha256.hexdigest()} does not match the manifest's {expected_sha256}"
        )


def verify_shard(info: ShardInfo) -> None:
    """Re-read a shard and check its sha256 and sample count against ``info``; raise on mismatch."""
    n = sum(1 for _ in iter_samples(info.url, expected_sha256=info.sha256))
    if n != info.nsamples:
        raise ValueError(f"{info.url}: holds {n} samples, the manifest says {info.nsamples}")


def _relative_name(stage_uri: str, url: str) -> str:
    prefix = stage_uri.rstrip("/") + "/"
    return url[len(prefix):] if url.startswith(prefix) else url


def wids_index_uri(stage_uri: str) -> str:
    return join(stage_uri, WIDS_INDEX_FILE)


def write_manifest(stage_uri: str, shards: list[ShardInfo]) -> str:
    """Write ``manifest.parquet`` and the matching wids index; return the manifest's URI.

    Shard URLs inside ``stage_uri`` are stored relative in the wids index (``wids`` resolves
    them against the index's location), so a copied dataset keeps working.
    """
    if not shards:
        raise ValueError(f"{stage_uri}: a manifest needs at least one shard")
    urls = [s.url for s in shards]
    if len(set(urls)) != len(urls):
        raise ValueError(f"{stage_uri}: the manifest lists a shard twice")
    rows = [
        {
            "url": s.url,
            "name": _relative_name(stage_uri, s.url),
            "nsamples": int(s.nsamples),
            "nbytes": int(s.nbytes),
            "sha256": s.sha256,
            "md5": s.md5,
        }
        for s in shards
    ]
    for row in rows:
        if row["nsamples"] < 0 or row["nbytes"] <= 0 or len(row["sha256"]) != 64:
            raise ValueError(f"{stage_uri}: shard {row['url']} has an invalid size or sha256")
    uri = join(stage_uri, MANIFEST_FILE)
    write_table(uri, rows, SCHEMAS["shards.manifest"])
    index = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": basename(stage_uri),
        "shardlist": [
            {"url": r["name"], "nsamples": r["nsamples"], "filesize": r["nbytes"], **({"md5sum": r["md5"]} if r["md5"] else {})}
            for r in rows
        ],
    }
    write_bytes_atomic(wids_index_uri(stage_uri), json.dumps(index, indent=1).encode())
    return uri


def read_manifest(stage_uri: str, require_commit: bool = True) -> pa.Table:
    """The stage's ``manifest.parquet`` (url, name, nsamples, nbytes, sha256, md5 per shard).

    A consumer only ever sees a committed stage's manifest (StageNotCommitted otherwise);
    the stage that is writing it passes ``require_commit=False``.
    """
    if require_commit:
        read_commit(stage_uri)
    return read_table(join(stage_uri, MANIFEST_FILE), schema=SCHEMAS["shards.manifest"])


def manifest_shards(stage_uri: str, require_commit: bool = True) -> list[ShardInfo]:
    """The manifest as :class:`ShardInfo` records (committed stages only, unless told otherwise)."""
    return [
        ShardInfo(url=r["url"], nsamples=r["nsamples"], nbytes=r["nbytes"], sha256=r["sha256"], md5=r["md5"])
        for r in read_manifest(stage_uri, require_commit=require_commit).to_pylist()
    ]


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    """webdataset ``gopen`` handler for ``s3://`` URLs (read only) via the configured client."""
    if mode != "rb":
        raise ValueError(f"{url}: webdataset may only read s3:// URLs; write shards with storage.shards.ShardWriter")
    fs, path = open_fs(url)
    with guard(url, "opening"):
        try:
            return fs.open(path, "rb", block_size=max(bufsize, 8 * 2**20))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{url} does not exist") from exc


def register_webdataset_s3() -> None:
    """Make plain ``webdataset.WebDataset("s3://...")`` read through :func:`gopen_s3`."""
    import importlib

    importlib.import_module("webdataset.gopen").gopen_schemes["s3"] = gopen_s3


register_webdataset_s3()

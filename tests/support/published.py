"""Checksums of everything a curate-lvd run published, comparable between runs and roots.

Every shard, array and other data file counts by its sha256; every Parquet table by the sha256
of its rows (the dataset root written as ROOT, so runs under different roots compare), with the
columns that time a run left out. JSON files (commit and part markers, stage configs) are left
out: they hold durations, the demo web's port and absolute paths, and what they summarise is
in the tables and shards themselves.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# Columns that depend on how fast this run's machine and network were, not on what it found: the
# seconds a crawl request waited for its answer, and how many attempts it took (on a loaded machine
# a request can time out and succeed on its retry, with the same body) (crawl records, per part
# and merged). What each URL became (status, reason, bytes, sha256, shard, key) is still compared.
TIMING_COLUMNS = ("elapsed", "attempts")


def local_path(root: str) -> Path:
    if not root.startswith("file://"):
        raise ValueError(f"published checksums read file:// roots only, not {root!r}")
    return Path(root[len("file://"):])


def table_checksum(path: Path, root: str) -> str:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    table = table.drop_columns([c for c in TIMING_COLUMNS if c in table.column_names])
    digest = hashlib.sha256(json.dumps(table.schema.names).encode())
    local = str(local_path(root))
    for row in table.to_pylist():
        text = json.dumps(row, sort_keys=True, default=str).replace(root, "ROOT").replace(local, "ROOT")
        digest.update(text.encode() + b"\n")
    return digest.hexdigest()


def file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def published_checksums(root: str, dataset: str, version: str) -> dict[str, str]:
    """{path under the version: checksum} for every stage's tables, shards and arrays."""
    base = local_path(root) / dataset / version
    out: dict[str, str] = {}
    for folder, dirs, files in os.walk(base):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            rel = path.relative_to(base).as_posix()
            if name.startswith(".") or name.endswith(".json"):
                continue
            out[rel] = table_checksum(path, root) if name.endswith(".parquet") else file_checksum(path)
    return out


def differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Paths present in one run only or with other content."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))

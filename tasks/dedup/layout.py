"""The dedup stage's files and their readers; other stages read dedup's output only through here."""
from __future__ import annotations

import pyarrow as pa

from storage.shards import shard_name
from storage.tables import SCHEMAS, read_table
from storage.uri import join

STAGE = "dedup"
KEEP_FILE = "keep.parquet"  # one row per pool image: key, shard, kept, reason
GROUPS_FILE = "groups.parquet"  # one row per duplicate group member


def read_keep(stage_uri: str) -> pa.Table:
    return read_table(join(stage_uri, KEEP_FILE), SCHEMAS["dedup.keep"])


def read_groups(stage_uri: str) -> pa.Table:
    return read_table(join(stage_uri, GROUPS_FILE), SCHEMAS["dedup.groups"])


def kept_keys_by_shard(stage_uri: str) -> dict[str, list[str]]:
    """Kept pool keys per canonical shard name (see `storage.shards.shard_name`)."""
    table = read_keep(stage_uri)
    out: dict[str, list[str]] = {}
    for key, shard, kept in zip(*(table.column(c).to_pylist() for c in ("key", "shard", "kept"))):
        if kept:
            out.setdefault(shard_name(shard), []).append(key)
    return out

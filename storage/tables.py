"""Parquet tables with explicit schemas, written atomically.

Each stage's tables have a schema in :data:`SCHEMAS` (``"<stage>.<table>"``); writing
checks rows against it, so a missing column, an extra column or a null in a
non-nullable field is an error at the writer rather than a surprise downstream.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from storage.uri import _local_temp_name, open_fs, open_input, put_file_atomic, scheme_of

SCHEMAS: dict[str, pa.Schema] = {
    # One row per WebDataset shard of a stage; a wids index is derived from it.
    "shards.manifest": pa.schema(
        [
            pa.field("url", pa.string(), nullable=False),
            pa.field("name", pa.string(), nullable=False),
            pa.field("nsamples", pa.int64(), nullable=False),
            pa.field("nbytes", pa.int64(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("md5", pa.string(), nullable=False),
        ]
    ),
    # Crawl stage: one row per page or image URL seen, whatever became of it (records.parquet).
    "crawl.records": pa.schema(
        [
            pa.field("part", pa.int32(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),  # page | image
            pa.field("url", pa.string(), nullable=False),
            pa.field("page", pa.string(), nullable=False),  # referring page (images) or input file (pages)
            pa.field("status", pa.string(), nullable=False),  # ok | rejected | failed
            pa.field("reason", pa.string(), nullable=False),  # "" when ok; codes in tasks/crawl/reasons.py
            pa.field("detail", pa.string(), nullable=False),
            pa.field("http_status", pa.int32()),
            pa.field("bytes", pa.int64(), nullable=False),  # original body bytes received
            pa.field("elapsed", pa.float64(), nullable=False),  # seconds spent fetching
            pa.field("attempts", pa.int32(), nullable=False),
            pa.field("final_url", pa.string()),
            pa.field("sha256", pa.string()),  # of the original bytes
            pa.field("shard", pa.string()),
            pa.field("key", pa.string()),
        ]
    ),
    # Dedup stage: one row per crawl-pool image, kept or removed and why.
    "dedup.keep": pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("shard", pa.string(), nullable=False),
            pa.field("kept", pa.bool_(), nullable=False),
            pa.field("reason", pa.string()),  # sha256 | pca-hash | phash | copy | eval-set | corrupt
            pa.field("group_id", pa.int64()),
            pa.field("representative", pa.string()),
            pa.field("score", pa.float32()),  # strongest link: cosine, Hamming distance or 1.0 (sha256)
            pa.field("eval_image", pa.string()),
            pa.field("error", pa.string()),
        ]
    ),
    # Dedup stage: one row per duplicate group (or decontaminated component).
    "dedup.groups": pa.schema(
        [
            pa.field("group_id", pa.int64(), nullable=False),
            pa.field("reason", pa.string(), nullable=False),
            pa.field("size", pa.int64(), nullable=False),
            pa.field("representative", pa.string()),
            pa.field("members", pa.list_(pa.string()), nullable=False),
            pa.field("member_reasons", pa.list_(pa.string()), nullable=False),
            pa.field("scores", pa.list_(pa.float32()), nullable=False),
            pa.field("eval_image", pa.string()),
        ]
    ),
    # Embed stage: ids of the pool vectors in embeddings-{i}.npy, and of each query set's vectors.
    "embed.ids": pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("shard", pa.string(), nullable=False)]),
    "embed.query_ids": pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("label", pa.string())]),
    # Retrieve stage: cluster of every pool vector, the selection, and per-query-set statistics.
    "retrieve.assignments": pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("shard", pa.string(), nullable=False),
            pa.field("cluster", pa.int64(), nullable=False),
            pa.field("similarity", pa.float32(), nullable=False),
        ]
    ),
    "retrieve.selection": pa.schema(
        [
            pa.field("source", pa.string(), nullable=False),
            pa.field("query_dataset", pa.string()),
            pa.field("query_id", pa.string()),
            pa.field("query_label", pa.string()),
            pa.field("key", pa.string()),
            pa.field("shard", pa.string()),
            pa.field("similarity", pa.float32(), nullable=False),
            pa.field("rule", pa.string(), nullable=False),
            pa.field("cluster", pa.int64()),
        ]
    ),
    "retrieve.datasets": pa.schema(
        [
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("rule", pa.string(), nullable=False),
            pa.field("queries", pa.int64(), nullable=False),
            pa.field("candidates", pa.int64(), nullable=False),
            pa.field("capped", pa.int64(), nullable=False),
            pa.field("collisions", pa.int64(), nullable=False),
            pa.field("selected", pa.int64(), nullable=False),
        ]
    ),
    # Curated shards: one row per sample written, with its provenance.
    "shards.samples": pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("shard", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("query_dataset", pa.string()),
            pa.field("query_id", pa.string()),
            pa.field("rule", pa.string(), nullable=False),
            pa.field("pool_key", pa.string()),
            pa.field("pool_shard", pa.string()),
            pa.field("similarity", pa.float32(), nullable=False),
            pa.field("cluster", pa.int64()),
            pa.field("url", pa.string()),
            pa.field("sha256", pa.string(), nullable=False),
        ]
    ),
    # Curated shards: per query set (or strategy), what was asked, found, lost and written.
    "shards.composition": pa.schema(
        [
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("rule", pa.string(), nullable=False),
            pa.field("queries", pa.int64(), nullable=False),
            pa.field("candidates", pa.int64(), nullable=False),
            pa.field("collisions", pa.int64(), nullable=False),
            pa.field("capped", pa.int64(), nullable=False),
            pa.field("final", pa.int64(), nullable=False),
        ]
    ),
}


def _rows_to_table(uri: str, rows: list[dict], schema: pa.Schema) -> pa.Table:
    expected = set(schema.names)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"{uri}: row {i} is a {type(row).__name__}, not a dict")
        keys = set(row)
        if keys != expected:
            missing, extra = sorted(expected - keys), sorted(keys - expected)
            raise ValueError(f"{uri}: row {i} does not match the schema (missing {missing}, unexpected {extra})")
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
        raise ValueError(f"{uri}: rows do not fit the schema: {exc}") from exc


def conform(uri: str, table: pa.Table | list[dict], schema: pa.Schema) -> pa.Table:
    """``table`` as exactly ``schema`` (column order, types, non-null fields), or a clear error."""
    if not isinstance(schema, pa.Schema):
        raise TypeError(f"{uri}: schema must be a pyarrow.Schema, got {type(schema).__name__}")
    if isinstance(table, list):
        table = _rows_to_table(uri, table, schema)
    elif isinstance(table, pa.Table):
        names = set(table.column_names)
        if names != set(schema.names) or len(table.column_names) != len(schema.names):
            raise ValueError(
                f"{uri}: columns {sorted(table.column_names)} do not match the schema's {sorted(schema.names)}"
            )
        try:
            table = table.select(schema.names).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"{uri}: table does not fit the schema: {exc}") from exc
    else:
        raise TypeError(f"{uri}: expected a pyarrow.Table or a list of dicts, got {type(table).__name__}")
    for fld in schema:
        if not fld.nullable and table.column(fld.name).null_count:
            raise ValueError(f"{uri}: column {fld.name!r} is not nullable but holds {table.column(fld.name).null_count} nulls")
    return table


def write_table(uri: str, table: pa.Table | list[dict], schema: pa.Schema) -> None:
    """Check ``table`` against ``schema`` and write it as Parquet; readers never see a partial file."""
    write_table_parts(uri, [table], schema)


def write_table_parts(uri: str, parts: Iterable[pa.Table | list[dict]], schema: pa.Schema) -> int:
    """Write the parts one after another as one Parquet file (each checked against ``schema``), holding
    one part in memory at a time; readers never see a partial file. Returns the rows written."""
    _, path = open_fs(uri)
    rows = 0

    def write(target: str) -> None:
        nonlocal rows
        with pq.ParquetWriter(target, schema, compression="zstd") as writer:
            for part in parts:
                part = conform(uri, part, schema)
                writer.write_table(part)
                rows += part.num_rows

    if scheme_of(uri) == "file":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = _local_temp_name(path)
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return rows
    with tempfile.NamedTemporaryFile(suffix=".parquet", dir=os.environ.get("LVD_SPOOL_DIR")) as spool:
        write(spool.name)
        put_file_atomic(spool.name, uri)
    return rows


def read_table(uri: str, schema: pa.Schema | None = None) -> pa.Table:
    """Read a Parquet table; with ``schema``, also check it was written with that schema."""
    with open_input(uri) as f:
        try:
            table = pq.read_table(f)
        except pa.ArrowInvalid as exc:
            raise ValueError(f"{uri}: not a readable Parquet file ({exc})") from exc
    if schema is not None and not table.schema.equals(schema, check_metadata=False):
        raise ValueError(f"{uri}: schema {table.schema} differs from the expected {schema}")
    return table

"""Schema and helpers of crawl/records.parquet: one row per page or image URL seen, whatever became of it."""

from __future__ import annotations

import pyarrow as pa

from storage.tables import SCHEMAS

RECORDS_TABLE = "crawl.records"

RECORDS_SCHEMA = pa.schema(
    [
        pa.field("part", pa.int32(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "page" | "image"
        pa.field("url", pa.string(), nullable=False),
        pa.field("page", pa.string(), nullable=False),  # referring page (images) or input file (pages)
        pa.field("status", pa.string(), nullable=False),  # "ok" | "rejected" | "failed"
        pa.field("reason", pa.string(), nullable=False),  # "" when ok
        pa.field("detail", pa.string(), nullable=False),
        pa.field("http_status", pa.int32(), nullable=True),
        pa.field("bytes", pa.int64(), nullable=False),  # original body bytes received
        pa.field("elapsed", pa.float64(), nullable=False),  # seconds spent fetching
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("final_url", pa.string(), nullable=True),
        pa.field("sha256", pa.string(), nullable=True),  # of the original bytes
        pa.field("shard", pa.string(), nullable=True),
        pa.field("key", pa.string(), nullable=True),
    ]
)

SCHEMAS.setdefault(RECORDS_TABLE, RECORDS_SCHEMA)


def record(
    part: int, kind: str, url: str, page: str, status: str, reason: str = "", detail: str = "", *,
    http_status: int | None = None, nbytes: int = 0, elapsed: float = 0.0, attempts: int = 0,
    final_url: str | None = None, sha256: str | None = None, shard: str | None = None, key: str | None = None,
) -> dict:
    return {
        "part": part, "kind": kind, "url": url, "page": page, "status": status, "reason": reason,
        "detail": detail, "http_status": http_status, "bytes": nbytes, "elapsed": round(elapsed, 6),
        "attempts": attempts, "final_url": final_url, "sha256": sha256, "shard": shard, "key": key,
    }

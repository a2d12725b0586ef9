"""Schema and helpers of crawl/records.parquet: one row per page or image URL seen, whatever became of it."""

from __future__ import annotations

import pyarrow as pa

from storage.tables import SCHEMAS

RECORDS_TABLE = "crawl.records"

RECORDS_SCHEMA: pa.Schema = SCHEMAS[RECORDS_TABLE]


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

"""Per-step training metrics, kept in memory and published as ``metrics.parquet``.

Rows are plain dicts (loss terms, schedules, throughput, memory, teacher entropy, k-NN results
on evaluation steps, the training phase by name). On resume the rows after the resumed step are
dropped, so the file always describes one consistent history.
"""

from __future__ import annotations

import io
import math
import resource
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from storage import uri as su


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated accelerator memory, or this process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


class MetricsLog:
    """Ordered rows with a union of columns; ``flush`` rewrites the Parquet file atomically."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.rows: list[dict] = []

    def resume(self, last_step: int) -> None:
        """Load the rows of an earlier attempt up to and including ``last_step``."""
        if not su.exists(self.uri):
            return
        table = pq.read_table(io.BytesIO(su.read_bytes(self.uri)))
        self.rows = [r for r in table.to_pylist() if r["step"] <= last_step]

    def append(self, row: dict) -> None:
        self.rows.append({k: _plain(v) for k, v in row.items()})

    def flush(self) -> None:
        if not self.rows:
            return
        columns: dict[str, None] = {}
        for row in self.rows:
            columns.update(dict.fromkeys(row))
        data = {c: [row.get(c) for row in self.rows] for c in columns}
        table = pa.table({c: pa.array(v, type=_column_type(c, v)) for c, v in data.items()})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        su.write_bytes_atomic(self.uri, buf.getvalue())

    def column(self, name: str) -> list[tuple[int, float]]:
        return [(r["step"], r[name]) for r in self.rows if r.get(name) is not None]


def _column_type(name: str, values: list) -> pa.DataType:
    """``step`` is an integer, text columns (``phase``) are strings, every other column a float."""
    if name == "step":
        return pa.int64()
    if any(isinstance(v, str) for v in values):
        return pa.string()
    return pa.float64()


def _plain(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return float("nan")
    return v

"""The retrieve stage's files: their names, the writers both a first run and a refresh use, and the readers
later stages (shard writing, a refresh) use.

Under the retrieve stage URI: ``centroids.npy`` (float32), ``assignments.parquet``, ``selection.parquet``,
``datasets.parquet`` and ``state/{topk,taken}-{dataset}.npy`` (what a refresh needs from this version).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from storage.commit import StageNotCommitted, read_commit
from storage.tables import SCHEMAS, read_table, write_table, write_table_parts
from storage.uri import join, read_bytes, write_bytes_atomic
from tasks.embed.run import Embeddings, PoolEmbeddings
from tasks.retrieve.selection import Selection

STAGE = "retrieve"
CENTROIDS_FILE = "centroids.npy"
ASSIGNMENTS_FILE = "assignments.parquet"
SELECTION_FILE = "selection.parquet"
DATASETS_FILE = "datasets.parquet"


def npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def selection_table(pool: PoolEmbeddings, sel: Selection, labels: np.ndarray, queries: dict[str, Embeddings],
                     as_is: list[tuple[str, Embeddings, np.ndarray]]) -> pa.Table:
    """One row per selected pool image (and per as-is query image), in ``selection.parquet``'s schema."""
    rows_ds = [sel.datasets[i].dataset for i in sel.dataset_index] if sel.datasets else []
    rules = [sel.datasets[i].rule for i in sel.dataset_index] if sel.datasets else []
    qids, qlabels = [], []
    for ds_i, qrow in zip(sel.dataset_index, sel.query_rows):
        picks = sel.datasets[ds_i]
        q = queries.get(picks.dataset)
        if q is None or qrow < 0:
            qids.append(None)
            qlabels.append(None)
        else:
            qids.append(q.keys[qrow])
            qlabels.append(q.labels[qrow] if q.labels else None)
    keys, shards = pool.ids_at(sel.pool_rows)
    cols = {
        "source": ["pool"] * len(sel.pool_rows),
        "query_dataset": [d if d else None for d in rows_ds],
        "query_id": qids,
        "query_label": qlabels,
        "key": keys,
        "shard": shards,
        "similarity": sel.similarity.astype(np.float32).tolist(),
        "rule": rules,
        "cluster": labels[sel.pool_rows].tolist(),
    }
    for name, q, q_clusters in as_is:
        n = len(q)
        cols["source"] += ["query"] * n
        cols["query_dataset"] += [name] * n
        cols["query_id"] += list(q.keys)
        cols["query_label"] += list(q.labels or [None] * n)
        cols["key"] += [None] * n
        cols["shard"] += [None] * n
        cols["similarity"] += [1.0] * n
        cols["rule"] += ["as-is"] * n
        cols["cluster"] += q_clusters.tolist()
    return pa.table({k: pa.array(v, SCHEMAS["retrieve.selection"].field(k).type) for k, v in cols.items()})


def _assignment_parts(pool: PoolEmbeddings, labels: np.ndarray, pool_sims: np.ndarray) -> Iterator[pa.Table]:
    for shard in pool.shards:
        ids = pool.shard_ids(shard)
        rows = slice(shard.start, shard.start + shard.rows)
        yield pa.table({"key": ids.column("key"), "shard": ids.column("shard"),
                        "cluster": pa.array(labels[rows], pa.int64()), "similarity": pa.array(pool_sims[rows], pa.float32())})


def write_outputs(stage_uri: str, pool: PoolEmbeddings, sel: Selection, labels: np.ndarray, pool_sims: np.ndarray,
                  queries: dict[str, Embeddings], as_is: list) -> list[dict]:
    """assignments (written shard by shard), selection and datasets tables; returns the per-dataset stats."""
    write_table_parts(join(stage_uri, ASSIGNMENTS_FILE), _assignment_parts(pool, labels, pool_sims),
                      SCHEMAS["retrieve.assignments"])
    table = selection_table(pool, sel, labels, queries, as_is)
    write_table(join(stage_uri, SELECTION_FILE), table, SCHEMAS["retrieve.selection"])
    stats = [dict(s, selected=s["selected"]) for s in sel.stats]
    for name, q, _ in as_is:
        stats.append({"dataset": name, "rule": "as-is", "queries": len(q), "candidates": len(q), "capped": 0,
                      "collisions": 0, "selected": len(q)})
    ds_rows = [{k: (s[k] if k in ("dataset", "rule") else int(s[k])) for k in SCHEMAS["retrieve.datasets"].names}
               for s in stats]
    write_table(join(stage_uri, DATASETS_FILE), ds_rows, SCHEMAS["retrieve.datasets"])
    return stats


def state_uri(stage_uri: str, kind: str, dataset: str) -> str:
    return join(stage_uri, "state", f"{kind}-{dataset}.npy")


def write_refresh_state(stage_uri: str, sel: Selection, labels: np.ndarray, n_clusters: int,
                        earlier: dict, previous: str | None) -> dict:
    """What a later refresh needs, counted over this version and its ancestors: each sample-rule query's
    N best similarities, each cluster-rule dataset's images taken per cluster, images selected per dataset."""
    selected = dict(earlier.get("selected_so_far") or {})
    for i, picks in enumerate(sel.datasets):
        won = sel.pool_rows[sel.dataset_index == i]
        selected[picks.dataset] = selected.get(picks.dataset, 0) + int(len(won))
        if picks.topk is not None:
            write_bytes_atomic(state_uri(stage_uri, "topk", picks.dataset), npy_bytes(picks.topk))
        if picks.rule == "cluster":
            taken = np.bincount(labels[won], minlength=n_clusters).astype(np.int64)
            if previous is not None:
                taken += read_state(previous, "taken", picks.dataset, np.zeros(n_clusters, np.int64))
            write_bytes_atomic(state_uri(stage_uri, "taken", picks.dataset), npy_bytes(taken))
    return {"selected_so_far": selected,
            "selected_total": int(earlier.get("selected_total") or 0) + int(len(sel.pool_rows))}


def read_state(stage_uri: str, kind: str, dataset: str, default: np.ndarray) -> np.ndarray:
    try:
        return np.load(io.BytesIO(read_bytes(state_uri(stage_uri, kind, dataset))), allow_pickle=False)
    except FileNotFoundError:
        return default


def read_selection(stage_uri: str) -> pa.Table:
    """``selection.parquet`` of a committed retrieve stage."""
    read_commit(stage_uri)
    return read_table(join(stage_uri, SELECTION_FILE), schema=SCHEMAS["retrieve.selection"])


def read_centroids(stage_uri: str) -> np.ndarray:
    """The centroids a retrieve stage used: its ``centroids.npy``, or in a refresh the earlier file its commit names."""
    try:
        uri = read_commit(stage_uri).get("extra", {}).get("centroids") or join(stage_uri, CENTROIDS_FILE)
    except StageNotCommitted:
        uri = join(stage_uri, CENTROIDS_FILE)
    return np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False)


def read_dataset_stats(stage_uri: str) -> list[dict]:
    """``datasets.parquet``: per query set, what was asked for and what was selected."""
    return read_table(join(stage_uri, DATASETS_FILE)).to_pylist()


def read_assignments(stage_uri: str) -> pa.Table:
    """``assignments.parquet``: every pool image's cluster and similarity."""
    return read_table(join(stage_uri, ASSIGNMENTS_FILE))

"""The retrieval stage end to end: validate inputs, cluster the pool, select, write, commit.

Outputs under the retrieve stage URI: ``centroids.npy`` (float32), ``assignments.parquet``
(key, shard, cluster, similarity for every pool image), ``selection.parquet`` (one row per
curated image with its query dataset, query id, pool key, similarity, rule and cluster) and
``datasets.parquet`` (per query set: queries, candidates, capped, collisions, selected).
"""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa

from storage.commit import (
    StageNotCommitted,
    begin_stage,
    commit_stage,
    config_digest,
    digest_of_commit,
    is_committed,
    read_commit,
)
from storage.tables import SCHEMAS, read_table, write_table
from storage.uri import join, read_bytes, write_bytes_atomic
from tasks.embed.run import EmbeddingMismatch, Embeddings, load_pool_embeddings, load_query_embeddings
from tasks.retrieve.balanced import balanced_sample, hierarchical_kmeans
from tasks.retrieve.config import RetrieveConfig
from tasks.retrieve.index import build_index, measure_recall
from tasks.retrieve.kmeans import KMeansError, assign, fit_kmeans
from tasks.retrieve.selection import Picks, Selection, cluster_rule, merge_picks, sample_rule

STAGE = "retrieve"


def _npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def validate_inputs(pool: Embeddings, queries: dict[str, Embeddings], cfg: RetrieveConfig) -> None:
    """Every check that can fail, before any clustering starts."""
    cfg.require_queries()
    n = len(pool)
    for name, q in queries.items():
        if q.dim != pool.dim:
            raise EmbeddingMismatch(f"query set {name!r} has {q.dim}-d embeddings but the pool has {pool.dim}-d")
    if cfg.strategy == "retrieval" and cfg.kmeans.n_clusters > n:
        raise KMeansError(f"kmeans.n_clusters={cfg.kmeans.n_clusters} is larger than the pool ({n} images)")
    if cfg.strategy == "hierarchical_balanced" and cfg.balanced.levels[0] > n:
        raise KMeansError(f"balanced.levels[0]={cfg.balanced.levels[0]} is larger than the pool ({n} images)")


def load_inputs(embed_stage_uri: str, cfg: RetrieveConfig) -> tuple[dict, Embeddings, dict[str, Embeddings]]:
    """The embed commit, the pool vectors and every configured query set's vectors (checked)."""
    commit = read_commit(embed_stage_uri)
    pool = load_pool_embeddings(embed_stage_uri, require_commit=False)
    queries = {qs.name: load_query_embeddings(embed_stage_uri, qs.name) for qs in cfg.queries}
    validate_inputs(pool, queries, cfg)
    return commit, pool, queries


def _selection_table(pool: Embeddings, sel: Selection, labels: np.ndarray, queries: dict[str, Embeddings],
                     as_is: list[tuple[str, Embeddings, np.ndarray]]) -> pa.Table:
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
    cols = {
        "source": ["pool"] * len(sel.pool_rows),
        "query_dataset": [d if d else None for d in rows_ds],
        "query_id": qids,
        "query_label": qlabels,
        "key": [pool.keys[r] for r in sel.pool_rows],
        "shard": [pool.shards[r] for r in sel.pool_rows],
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


def select(pool: Embeddings, queries: dict[str, Embeddings], cfg: RetrieveConfig, centroids: np.ndarray,
           labels: np.ndarray) -> tuple[Selection, dict]:
    """Apply every query set's rule and merge (strategy 'retrieval'); returns the selection and index facts."""
    info: dict = {}
    picks: list[Picks] = []
    caps = []
    sample_sets = [qs for qs in cfg.queries if qs.rule == "sample"]
    if sample_sets:
        built = build_index(pool.vectors, cfg.index)
        all_q = np.concatenate([queries[qs.name].vectors for qs in sample_sets])
        k = max(qs.n_neighbours for qs in sample_sets)
        info = {"factory": built.factory, "train_seconds": round(built.train_seconds, 3),
                "add_seconds": round(built.add_seconds, 3), "nprobe": cfg.index.nprobe,
                **measure_recall(built, pool.vectors, all_q, k, cfg.index.recall_sample, cfg.index.seed)}
        for qs in sample_sets:
            picks.append(sample_rule(qs, queries[qs.name].vectors, built))
            caps.append(qs.cap)
    for qs in cfg.queries:
        if qs.rule == "cluster":
            picks.append(cluster_rule(qs, queries[qs.name].vectors, pool.vectors, centroids, labels, cfg.kmeans.seed))
            caps.append(qs.cap)
    return merge_picks(picks, caps, cfg.min_similarity, cfg.max_total), info


def run_retrieve(embed_stage_uri: str, stage_uri: str, cfg: RetrieveConfig, previous: str | None = None) -> dict:
    """Run (or skip, if already committed with this config and input) the retrieval stage; returns its commit.

    ``previous`` (a refresh: the earlier version's retrieve stage) selects among the new pool images
    only, against the earlier centroids and per-query bars (see ``tasks.retrieve.incremental``).
    """
    input_digest = digest_of_commit(embed_stage_uri)
    if previous is not None:
        input_digest = config_digest({"embed": input_digest, "previous": digest_of_commit(previous)})
    digest = config_digest(cfg)
    if is_committed(stage_uri):  # same digests: skip; other digests: StageConflict
        return begin_stage(stage_uri, stage=STAGE, config_digest=digest, input_digest=input_digest, config=cfg).commit
    if previous is not None:
        from tasks.retrieve.incremental import run_refresh_retrieve

        return run_refresh_retrieve(embed_stage_uri, stage_uri, cfg, previous, digest, input_digest)
    embed_commit, pool, queries = load_inputs(embed_stage_uri, cfg)
    begin_stage(stage_uri, stage=STAGE, config_digest=digest, input_digest=input_digest, config=cfg)
    start = time.perf_counter()
    if cfg.strategy == "hierarchical_balanced":
        hierarchy = hierarchical_kmeans(pool.vectors, cfg.balanced, cfg.kmeans.n_iter, cfg.kmeans.use_gpu)
        centroids, labels, pool_sims = hierarchy.centroids[0], hierarchy.labels[0], hierarchy.similarities
        rows = balanced_sample(hierarchy, cfg.balanced)
        balanced = Picks("", "balanced", rows, np.full(len(rows), -1, np.int64), pool_sims[rows])
        sel = merge_picks([balanced], [None], cfg.min_similarity, cfg.max_total)
        index_info: dict = {"levels": [int(c.shape[0]) for c in hierarchy.centroids]}
        kmeans_seconds = time.perf_counter() - start
    else:
        km = fit_kmeans(pool.vectors, cfg.kmeans)
        centroids, labels, pool_sims = km.centroids, km.labels, km.similarities
        kmeans_seconds = km.train_seconds + km.assign_seconds
        sel, index_info = select(pool, queries, cfg, centroids, labels)
    as_is = []
    for qs in cfg.queries:
        if qs.rule == "as-is":
            q_labels, _ = assign(queries[qs.name].vectors, centroids)
            as_is.append((qs.name, queries[qs.name], q_labels))
    write_bytes_atomic(join(stage_uri, "centroids.npy"), _npy_bytes(centroids.astype(np.float32)))
    stats = write_outputs(stage_uri, pool, sel, labels, pool_sims, queries, as_is)
    state = write_refresh_state(stage_uri, sel, labels, centroids.shape[0], {}, None)
    sizes = np.bincount(labels, minlength=centroids.shape[0])
    return commit_stage(
        stage_uri,
        stage=STAGE,
        config_digest=digest,
        input_digest=input_digest,
        counts={
            "pool": len(pool),
            "clusters": int(centroids.shape[0]),
            "selected_pool": int(len(sel.pool_rows)),
            "selected_as_is": int(sum(len(q) for _, q, _ in as_is)),
            "collisions": int(sum(s["collisions"] for s in sel.stats)),
        },
        extra={
            "strategy": cfg.strategy,
            "model_id": embed_commit.get("extra", {}).get("model_id"),
            "checksum": embed_commit.get("extra", {}).get("checksum"),
            "kmeans_seconds": round(kmeans_seconds, 3),
            "cluster_sizes": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max()),
                              "empty": int(np.sum(sizes == 0))},
            "index": index_info,
            "datasets": stats,
            "dropped_by_max_total": sel.dropped_total_cap,
            "centroids": join(stage_uri, "centroids.npy"),
            **state,
        },
    )


def write_outputs(stage_uri: str, pool: Embeddings, sel: Selection, labels: np.ndarray, pool_sims: np.ndarray,
                  queries: dict[str, Embeddings], as_is: list) -> list[dict]:
    """assignments, selection and datasets tables; returns the per-dataset stats."""
    write_table(
        join(stage_uri, "assignments.parquet"),
        pa.table({"key": pa.array(pool.keys, pa.string()), "shard": pa.array(pool.shards, pa.string()),
                  "cluster": pa.array(labels, pa.int64()), "similarity": pa.array(pool_sims, pa.float32())}),
        SCHEMAS["retrieve.assignments"],
    )
    table = _selection_table(pool, sel, labels, queries, as_is)
    write_table(join(stage_uri, "selection.parquet"), table, SCHEMAS["retrieve.selection"])
    stats = [dict(s, selected=s["selected"]) for s in sel.stats]
    for name, q, _ in as_is:
        stats.append({"dataset": name, "rule": "as-is", "queries": len(q), "candidates": len(q), "capped": 0,
                      "collisions": 0, "selected": len(q)})
    ds_rows = [{k: (s[k] if k in ("dataset", "rule") else int(s[k])) for k in SCHEMAS["retrieve.datasets"].names}
               for s in stats]
    write_table(join(stage_uri, "datasets.parquet"), ds_rows, SCHEMAS["retrieve.datasets"])
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
            write_bytes_atomic(state_uri(stage_uri, "topk", picks.dataset), _npy_bytes(picks.topk))
        if picks.rule == "cluster":
            taken = np.bincount(labels[won], minlength=n_clusters).astype(np.int64)
            if previous is not None:
                taken += read_state(previous, "taken", picks.dataset, np.zeros(n_clusters, np.int64))
            write_bytes_atomic(state_uri(stage_uri, "taken", picks.dataset), _npy_bytes(taken))
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
    return read_table(join(stage_uri, "selection.parquet"), schema=SCHEMAS["retrieve.selection"])


def read_centroids(stage_uri: str) -> np.ndarray:
    """The centroids a retrieve stage used: its ``centroids.npy``, or in a refresh the earlier file its commit names."""
    try:
        uri = read_commit(stage_uri).get("extra", {}).get("centroids") or join(stage_uri, "centroids.npy")
    except StageNotCommitted:
        uri = join(stage_uri, "centroids.npy")
    return np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False)

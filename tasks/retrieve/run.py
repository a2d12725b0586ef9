"""The retrieval stage end to end: validate inputs, cluster the pool, select, write, commit.

Outputs under the retrieve stage URI (written and read by ``tasks.retrieve.layout``): ``centroids.npy``
(float32), ``assignments.parquet`` (key, shard, cluster, similarity for every pool image), ``selection.parquet``
(one row per curated image with its query dataset, query id, pool key, similarity, rule and cluster) and
``datasets.parquet`` (per query set: queries, candidates, capped, collisions, selected).
"""

from __future__ import annotations

import time

import numpy as np

from storage.commit import begin_stage, commit_stage, config_digest, digest_of_commit, is_committed, read_commit
from storage.uri import join, write_bytes_atomic
from tasks.embed.run import EmbeddingMismatch, Embeddings, PoolEmbeddings, load_query_embeddings, open_pool_embeddings
from tasks.retrieve.balanced import balanced_sample, hierarchical_kmeans
from tasks.retrieve.config import RetrieveConfig
from tasks.retrieve.index import build_index, measure_recall
from tasks.retrieve.incremental import run_refresh_retrieve
from tasks.retrieve.kmeans import KMeansError, assign, fit_kmeans
from tasks.retrieve.layout import CENTROIDS_FILE, STAGE, npy_bytes, write_outputs, write_refresh_state
from tasks.retrieve.selection import Picks, Selection, cluster_rule, merge_picks, sample_rule


# Facts of the index that are timings (commit `timings`, not `extra`, so the digest stays put).
INDEX_TIMINGS = ("train_seconds", "add_seconds", "queries_per_second")


def validate_inputs(pool: PoolEmbeddings, queries: dict[str, Embeddings], cfg: RetrieveConfig) -> None:
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


def load_inputs(embed_stage_uri: str, cfg: RetrieveConfig) -> tuple[dict, PoolEmbeddings, dict[str, Embeddings]]:
    """The embed commit, the (sharded) pool and every configured query set's vectors (checked)."""
    commit = read_commit(embed_stage_uri)
    pool = open_pool_embeddings(embed_stage_uri, require_commit=False)
    queries = {qs.name: load_query_embeddings(embed_stage_uri, qs.name) for qs in cfg.queries}
    validate_inputs(pool, queries, cfg)
    return commit, pool, queries


def select(pool: PoolEmbeddings, queries: dict[str, Embeddings], cfg: RetrieveConfig, centroids: np.ndarray,
           labels: np.ndarray) -> tuple[Selection, dict]:
    """Apply every query set's rule and merge (strategy 'retrieval'); returns the selection and index facts."""
    info: dict = {}
    picks: list[Picks] = []
    caps = []
    sample_sets = [qs for qs in cfg.queries if qs.rule == "sample"]
    if sample_sets:
        built = build_index(pool, cfg.index)
        all_q = np.concatenate([queries[qs.name].vectors for qs in sample_sets])
        k = max(qs.n_neighbours for qs in sample_sets)
        info = {"factory": built.factory, "train_seconds": round(built.train_seconds, 3),
                "add_seconds": round(built.add_seconds, 3), "nprobe": cfg.index.nprobe,
                **measure_recall(built, pool, all_q, k, cfg.index.recall_sample, cfg.index.seed,
                                 pool_sample=cfg.index.train_size)}
        for qs in sample_sets:
            picks.append(sample_rule(qs, queries[qs.name].vectors, built))
            caps.append(qs.cap)
    for qs in cfg.queries:
        if qs.rule == "cluster":
            picks.append(cluster_rule(qs, queries[qs.name].vectors, pool, centroids, labels, cfg.kmeans.seed))
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
        return run_refresh_retrieve(embed_stage_uri, stage_uri, cfg, previous, digest, input_digest)
    embed_commit, pool, queries = load_inputs(embed_stage_uri, cfg)
    begin_stage(stage_uri, stage=STAGE, config_digest=digest, input_digest=input_digest, config=cfg)
    start = time.perf_counter()
    if cfg.strategy == "hierarchical_balanced":
        hierarchy = hierarchical_kmeans(pool, cfg.balanced, cfg.kmeans.use_gpu, cfg.kmeans.train_sample)
        centroids, labels, pool_sims = hierarchy.centroids[0], hierarchy.labels[0], hierarchy.similarities
        rows = balanced_sample(hierarchy, cfg.balanced)
        balanced = Picks("", "balanced", rows, np.full(len(rows), -1, np.int64), pool_sims[rows])
        sel = merge_picks([balanced], [None], cfg.min_similarity, cfg.max_total)
        index_info: dict = {"levels": [int(c.shape[0]) for c in hierarchy.centroids]}
        kmeans_seconds = time.perf_counter() - start
    else:
        km = fit_kmeans(pool, cfg.kmeans)
        centroids, labels, pool_sims = km.centroids, km.labels, km.similarities
        kmeans_seconds = km.train_seconds + km.assign_seconds
        sel, index_info = select(pool, queries, cfg, centroids, labels)
    as_is = []
    for qs in cfg.queries:
        if qs.rule == "as-is":
            q_labels, _ = assign(queries[qs.name].vectors, centroids)
            as_is.append((qs.name, queries[qs.name], q_labels))
    write_bytes_atomic(join(stage_uri, CENTROIDS_FILE), npy_bytes(centroids.astype(np.float32)))
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
            "cluster_sizes": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max()),
                              "empty": int(np.sum(sizes == 0))},
            "index": {k: v for k, v in index_info.items() if k not in INDEX_TIMINGS},
            "datasets": stats,
            "dropped_by_max_total": sel.dropped_total_cap,
            "centroids": join(stage_uri, CENTROIDS_FILE),
            **state,
        },
        timings={"kmeans_seconds": round(kmeans_seconds, 3),  # out of the digest: they differ run to run
                 **{f"index_{k}": index_info[k] for k in INDEX_TIMINGS if k in index_info}},
    )

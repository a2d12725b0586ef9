"""Retrieval in a refresh: select among the new pool images only, with the same query sets.

Earlier selections stay (their shards are immutable); new images are added by the same rules,
measured against what the earlier versions persisted, so repeated refreshes do not inflate the
dataset:

* cluster rule: the earlier version's centroids (no new k-means; the clusters keep their meaning),
  new images assigned to them, and each qualifying cluster filled up to M minus what it already gave;
* sample rule: a new image joins when it ranks among a query's N best over every version's pool
  (each query's N best similarities so far are the bar), so a weak batch adds little;
* as-is query sets joined with the first version and are not added again;
* per-dataset caps and ``max_total`` count the images earlier versions selected.
"""

from __future__ import annotations

import time

import numpy as np

from storage.commit import begin_stage, commit_stage, read_commit
from storage.uri import join, write_bytes_atomic
from tasks.embed.run import EmbeddingMismatch, load_query_embeddings, open_pool_embeddings
from tasks.retrieve.config import RetrieveConfig
from tasks.retrieve.index import build_index
from tasks.retrieve.kmeans import assign
from tasks.retrieve.layout import (
    CENTROIDS_FILE,
    STAGE,
    npy_bytes,
    read_centroids,
    read_state,
    state_uri,
    write_outputs,
    write_refresh_state,
)
from tasks.retrieve.selection import Picks, cluster_rule, merge_picks, sample_rule_after


def _remaining(cap: int | None, used: int) -> int | None:
    return None if cap is None else max(0, cap - used)


def run_refresh_retrieve(embed_stage_uri: str, stage_uri: str, cfg: RetrieveConfig, previous: str,
                         digest: str, input_digest: str) -> dict:
    """Select new pool images of ``embed_stage_uri`` on top of the committed retrieve stage ``previous``."""
    if cfg.strategy != "retrieval":
        raise ValueError(f"retrieve.strategy {cfg.strategy!r}: a refresh supports only the 'retrieval' strategy")
    earlier = read_commit(previous).get("extra", {})
    embed_commit = read_commit(embed_stage_uri)
    pool = open_pool_embeddings(embed_stage_uri, require_commit=False)
    queries = {qs.name: load_query_embeddings(embed_stage_uri, qs.name) for qs in cfg.queries}
    was = (earlier.get("model_id"), earlier.get("checksum"))
    now = (embed_commit.get("extra", {}).get("model_id"), embed_commit.get("extra", {}).get("checksum"))
    if was != now:
        raise EmbeddingMismatch(f"the new images were embedded by {now[0]} (checksum {now[1]}) but {previous} "
                                f"selected with {was[0]} (checksum {was[1]}); a refresh needs the same weights")
    centroids = read_centroids(previous)
    for name, q in {"pool": pool, **queries}.items():
        if len(q) and q.dim != centroids.shape[1]:
            raise EmbeddingMismatch(f"{name} has {q.dim}-d embeddings but {previous}'s centroids are "
                                    f"{centroids.shape[1]}-d")
    begin_stage(stage_uri, stage=STAGE, config_digest=digest, input_digest=input_digest, config=cfg)
    start = time.perf_counter()
    labels, pool_sims = assign(pool, centroids) if len(pool) else (np.zeros(0, np.int64),
                                                                          np.zeros(0, np.float32))
    so_far = earlier.get("selected_so_far") or {}
    picks: list[Picks] = []
    caps: list[int | None] = []
    built = build_index(pool, cfg.index) if len(pool) and any(
        qs.rule == "sample" for qs in cfg.queries) else None
    for qs in cfg.queries:
        q = queries[qs.name].vectors
        if qs.rule == "sample" and built is not None:
            bar = read_state(previous, "topk", qs.name, np.full((len(q), 0), -np.inf, np.float32))
            picks.append(sample_rule_after(qs, q, built, bar))
        elif qs.rule == "cluster" and len(pool):
            taken = read_state(previous, "taken", qs.name, np.zeros(centroids.shape[0], np.int64))
            picks.append(cluster_rule(qs, q, pool, centroids, labels, cfg.kmeans.seed, taken))
        else:
            continue
        caps.append(_remaining(qs.cap, int(so_far.get(qs.name, 0))))
    sel = merge_picks(picks, caps, cfg.min_similarity,
                      _remaining(cfg.max_total, int(earlier.get("selected_total") or 0)))
    stats = write_outputs(stage_uri, pool, sel, labels, pool_sims, queries, [])
    state = write_refresh_state(stage_uri, sel, labels, centroids.shape[0], earlier, previous)
    for qs in cfg.queries:  # a bar no new image changed is carried forward as it was
        if qs.rule == "sample" and not any(p.dataset == qs.name for p in picks):
            bar = read_state(previous, "topk", qs.name, np.zeros((0, 0), np.float32))
            write_bytes_atomic(state_uri(stage_uri, "topk", qs.name), npy_bytes(bar))
    return commit_stage(
        stage_uri,
        stage=STAGE,
        config_digest=digest,
        input_digest=input_digest,
        counts={
            "pool": len(pool),
            "clusters": int(centroids.shape[0]),
            "selected_pool": int(len(sel.pool_rows)),
            "selected_as_is": 0,
            "collisions": int(sum(s["collisions"] for s in sel.stats)),
        },
        extra={
            "strategy": cfg.strategy,
            "model_id": embed_commit.get("extra", {}).get("model_id"),
            "checksum": embed_commit.get("extra", {}).get("checksum"),
            "datasets": stats,
            "dropped_by_max_total": sel.dropped_total_cap,
            "centroids": earlier.get("centroids") or join(previous, CENTROIDS_FILE),
            "previous": previous,
            **state,
        },
        timings={"kmeans_seconds": round(time.perf_counter() - start, 3)},  # out of the digest
    )

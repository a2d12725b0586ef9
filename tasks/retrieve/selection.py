"""Turn query sets into pool picks (sample / cluster / as-is rules) and merge them into one selection.

Collisions (one pool image picked by several queries, within a dataset or across datasets)
are resolved by keeping the pick with the best similarity; the others are counted against
the dataset that lost them, so the composition table can show what each query set really added.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tasks.embed.run import PoolEmbeddings, gather
from tasks.queries.config import QuerySetConfig
from tasks.retrieve.kmeans import assign
from tasks.retrieve.index import BuiltIndex


@dataclass
class Picks:
    """Candidate pool picks of one query set: parallel arrays, one entry per (query, pool image) pair."""

    dataset: str
    rule: str
    pool_rows: np.ndarray  # int64 rows into the pool embeddings
    query_rows: np.ndarray  # int64 rows into the query set
    similarity: np.ndarray  # float32 cosine similarity
    queries: int = 0
    stats: dict = field(default_factory=dict)
    # sample rule: each query's k best similarities (queries x k, -inf where the pool ran out), the bar a
    # later refresh's new images must clear
    topk: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.pool_rows.shape[0])

    def take(self, mask_or_idx: np.ndarray) -> "Picks":
        return Picks(self.dataset, self.rule, self.pool_rows[mask_or_idx], self.query_rows[mask_or_idx],
                     self.similarity[mask_or_idx], self.queries, dict(self.stats), self.topk)


def _empty(dataset: str, rule: str, queries: int) -> Picks:
    return Picks(dataset, rule, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), queries)


def sample_rule(qs: QuerySetConfig, queries: np.ndarray, index: BuiltIndex) -> Picks:
    """N nearest pool images per query."""
    k = min(qs.n_neighbours, index.index.ntotal)
    sims, ids = index.search(queries, k)
    qrows = np.repeat(np.arange(queries.shape[0], dtype=np.int64), k)
    picks = Picks(qs.name, "sample", ids.reshape(-1).astype(np.int64), qrows, sims.reshape(-1).astype(np.float32),
                  queries.shape[0], topk=np.where(ids >= 0, sims, -np.inf).astype(np.float32))
    return picks.take(picks.pool_rows >= 0)


def sample_rule_after(qs: QuerySetConfig, queries: np.ndarray, index: BuiltIndex, earlier: np.ndarray) -> Picks:
    """The sample rule in a refresh: a new image is picked for a query when it ranks among the query's
    N best over the earlier pools (``earlier``: their N best similarities per query) and this one,
    so a refresh adds what a rebuild over every version would pick, and earlier picks stay."""
    k = min(qs.n_neighbours, index.index.ntotal)
    sims, ids = index.search(queries, k)
    sims = np.where(ids >= 0, sims, -np.inf).astype(np.float32)
    both = np.concatenate([earlier.astype(np.float32), sims], axis=1)
    order = np.argsort(-both, axis=1, kind="stable")[:, : qs.n_neighbours]  # ties keep the earlier image
    new = (order >= earlier.shape[1]) & np.isfinite(np.take_along_axis(both, order, axis=1))
    qrows, slots = np.nonzero(new)
    cols = order[qrows, slots] - earlier.shape[1]
    return Picks(qs.name, "sample", ids[qrows, cols].astype(np.int64), qrows.astype(np.int64),
                 sims[qrows, cols], queries.shape[0], topk=np.take_along_axis(both, order, axis=1))


def cluster_rule(
    qs: QuerySetConfig,
    queries: np.ndarray,
    pool: np.ndarray | PoolEmbeddings,
    centroids: np.ndarray,
    pool_labels: np.ndarray,
    seed: int = 0,
    taken: np.ndarray | None = None,
    gather_rows: int = 262_144,
) -> Picks:
    """M random pool images from every cluster holding more than ``min_queries_per_cluster`` queries.

    Each pick is credited to the query of that cluster it is most similar to. ``taken`` (per cluster:
    images earlier versions already took from it) lowers each cluster's M, so a refresh fills clusters
    up to M instead of adding M more. The picks' vectors are read from the pool in groups of clusters
    of about ``gather_rows`` images (one pass over the shards per group), never the whole pool.
    """
    q_labels, _ = assign(queries, centroids)
    counts = np.bincount(q_labels, minlength=centroids.shape[0])
    qualifying = np.flatnonzero(counts > qs.min_queries_per_cluster)
    order = np.argsort(pool_labels, kind="stable")
    bounds = np.searchsorted(pool_labels[order], np.arange(centroids.shape[0] + 1))
    chosen: list[tuple[int, np.ndarray]] = []
    for c in qualifying:
        members = order[bounds[c] : bounds[c + 1]]
        quota = qs.per_cluster - (int(taken[c]) if taken is not None else 0)
        if members.size == 0 or quota <= 0:
            continue
        if members.size > quota:
            rng = np.random.default_rng([seed, int(c)])
            members = np.sort(rng.choice(members, quota, replace=False))
        chosen.append((int(c), members.astype(np.int64)))
    pool_rows, query_rows, sims = [], [], []
    group_start = 0
    while group_start < len(chosen):
        group_end, size = group_start, 0
        while group_end < len(chosen) and (size == 0 or size + len(chosen[group_end][1]) <= gather_rows):
            size += len(chosen[group_end][1])
            group_end += 1
        group = chosen[group_start:group_end]
        vectors = gather(pool, np.concatenate([m for _, m in group]))
        offset = 0
        for c, members in group:
            q_in = np.flatnonzero(q_labels == c)
            s = vectors[offset : offset + len(members)] @ queries[q_in].T
            offset += len(members)
            best = np.argmax(s, axis=1)
            pool_rows.append(members)
            query_rows.append(q_in[best].astype(np.int64))
            sims.append(s[np.arange(len(members)), best].astype(np.float32))
        group_start = group_end
    if not pool_rows:
        picks = _empty(qs.name, "cluster", queries.shape[0])
    else:
        picks = Picks(qs.name, "cluster", np.concatenate(pool_rows), np.concatenate(query_rows),
                      np.concatenate(sims), queries.shape[0])
    picks.stats["qualifying_clusters"] = int(len(qualifying))
    return picks


def best_per_pool_row(picks: Picks) -> tuple[Picks, int]:
    """One pick per pool image (the most similar query wins) -> (picks, collisions dropped)."""
    if len(picks) == 0:
        return picks, 0
    order = np.lexsort((picks.query_rows, -picks.similarity, picks.pool_rows))
    first = np.ones(len(order), bool)
    first[1:] = picks.pool_rows[order][1:] != picks.pool_rows[order][:-1]
    kept = picks.take(np.sort(order[first]))
    return kept, len(picks) - len(kept)


def top_by_similarity(picks: Picks, cap: int | None) -> tuple[Picks, int]:
    """At most ``cap`` picks, the most similar ones -> (picks, dropped)."""
    if cap is None or len(picks) <= cap:
        return picks, 0
    order = np.lexsort((picks.pool_rows, -picks.similarity))[:cap]
    return picks.take(np.sort(order)), len(picks) - cap


@dataclass
class Selection:
    """The merged selection: one row per chosen pool image, plus per-dataset accounting."""

    pool_rows: np.ndarray
    similarity: np.ndarray
    dataset_index: np.ndarray  # which entry of ``datasets`` won the image
    query_rows: np.ndarray
    datasets: list[Picks]
    stats: list[dict]
    dropped_total_cap: int = 0


def merge_picks(per_dataset: list[Picks], caps: list[int | None], min_similarity: float = -1.0,
                max_total: int | None = None) -> Selection:
    """Per dataset: drop weak picks, resolve its own collisions, apply its cap; then resolve across datasets."""
    prepared, stats = [], []
    for picks, cap in zip(per_dataset, caps):
        candidates = len(picks)
        picks = picks.take(picks.similarity >= min_similarity)
        below = candidates - len(picks)
        picks, within = best_per_pool_row(picks)
        picks, capped = top_by_similarity(picks, cap)
        prepared.append(picks)
        stats.append({"dataset": picks.dataset, "rule": picks.rule, "queries": picks.queries,
                      "candidates": candidates, "below_min_similarity": below, "collisions": within,
                      "capped": capped, **picks.stats})
    if prepared:
        pool_rows = np.concatenate([p.pool_rows for p in prepared])
        sims = np.concatenate([p.similarity for p in prepared])
        qrows = np.concatenate([p.query_rows for p in prepared])
        ds = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(prepared)])
    else:
        pool_rows, sims, qrows, ds = (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64),
                                      np.zeros(0, np.int64))
    order = np.lexsort((ds, -sims, pool_rows))
    first = np.ones(len(order), bool)
    first[1:] = pool_rows[order][1:] != pool_rows[order][:-1]
    winners, losers = order[first], order[~first]
    for i in np.bincount(ds[losers], minlength=len(prepared)).nonzero()[0]:
        stats[i]["collisions"] += int(np.sum(ds[losers] == i))
    dropped = 0
    if max_total is not None and len(winners) > max_total:
        keep = np.lexsort((pool_rows[winners], -sims[winners]))[:max_total]
        dropped = len(winners) - max_total
        winners = winners[keep]
    winners = winners[np.argsort(pool_rows[winners], kind="stable")]
    for i, s in enumerate(stats):
        s["selected"] = int(np.sum(ds[winners] == i))
    return Selection(pool_rows[winners], sims[winners], ds[winners], qrows[winners], prepared, stats, dropped)

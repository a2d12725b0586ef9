"""Refresh rules: a refresh picks among new images what a rebuild over every version would pick."""
import numpy as np

from tasks.queries.config import QuerySetConfig
from tasks.retrieve.config import IndexConfig
from tasks.retrieve.index import build_index
from tasks.retrieve.kmeans import normalise_rows
from tasks.retrieve.selection import cluster_rule, sample_rule, sample_rule_after


def _vectors(seed: int, n: int, d: int = 16) -> np.ndarray:
    return normalise_rows(np.random.default_rng(seed).normal(size=(n, d)))


def test_sample_rule_after_adds_what_a_rebuild_over_both_pools_would_pick():
    qs = QuerySetConfig(name="q", uri="unused", n_neighbours=4)
    queries, old, new = _vectors(0, 30), _vectors(1, 200), _vectors(2, 120)
    exact = IndexConfig(exact_below=10_000)
    first = sample_rule(qs, queries, build_index(old, exact))
    refresh = sample_rule_after(qs, queries, build_index(new, exact), first.topk)
    rebuild = sample_rule(qs, queries, build_index(np.concatenate([old, new]), exact))
    wanted = {(int(q), int(p) - len(old)) for q, p in zip(rebuild.query_rows, rebuild.pool_rows) if p >= len(old)}
    got = set(zip(refresh.query_rows.tolist(), refresh.pool_rows.tolist()))
    assert got == wanted and 0 < len(got) < 4 * len(queries)
    np.testing.assert_allclose(refresh.topk, rebuild.topk, rtol=1e-5)
    # a batch pointing away from the queries adds nothing: every query already has 4 closer images
    away = normalise_rows(np.tile(-queries.mean(0), (50, 1)))
    assert len(sample_rule_after(qs, queries, build_index(away, exact), rebuild.topk)) == 0


def test_cluster_rule_fills_each_cluster_up_to_m():
    qs = QuerySetConfig(name="c", uri="unused", rule="cluster", per_cluster=5, min_queries_per_cluster=0)
    centroids = np.eye(4, 16, dtype=np.float32)
    pool = normalise_rows(np.repeat(centroids, 8, axis=0) + 0.01 * _vectors(4, 32))
    labels = np.repeat(np.arange(4), 8)
    queries = centroids[:2]
    taken = np.array([5, 3, 0, 0])
    picks = cluster_rule(qs, queries, pool, centroids, labels, seed=0, taken=taken)
    per_cluster = np.bincount(labels[picks.pool_rows], minlength=4)
    assert per_cluster.tolist() == [0, 2, 0, 0]

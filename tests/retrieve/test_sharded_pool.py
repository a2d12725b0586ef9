"""Retrieval reads the pool shard by shard; on small pools it must decide exactly what the in-memory path
(every shard concatenated into one float32 array) decided.

``data/sharded_pool_golden.json`` holds the outputs of that in-memory path on the synthetic pool below,
for the exact index and the IVF index with two-level k-means (commit 6c35cc7), and the balanced strategy
with ssl-data-curation's defaults (commit 8b9ce4e). Regenerate it only when a decision is meant to change:
``python -m tests.retrieve.test_sharded_pool --write``.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from storage.tables import read_table
from tasks.queries.config import QuerySetConfig
from tasks.retrieve.config import BalancedConfig, IndexConfig, KMeansConfig, RetrieveConfig
from tasks.retrieve.layout import read_centroids, read_dataset_stats, read_selection
from tasks.retrieve.run import run_retrieve
from tests.support.synthetic_pool import SyntheticPool, write_synthetic_embed_stage

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "sharded_pool_golden.json")
POOL = SyntheticPool(n=3000, dim=32, shard_rows=700, centres=16, spread=0.8, seed=3)
QUERIES = {"near": 60, "topics": 80, "kept": 10}
SETS = [QuerySetConfig(name="near", uri="unused", rule="sample", n_neighbours=4),
        QuerySetConfig(name="topics", uri="unused", rule="cluster", per_cluster=25),
        QuerySetConfig(name="kept", uri="unused", rule="as-is")]
KMEANS = KMeansConfig(n_clusters=24, n_iter=10, train_sample=2000)
CONFIGS = {
    "exact": RetrieveConfig(queries=SETS, kmeans=KMEANS),
    "ivf": RetrieveConfig(queries=SETS, kmeans=KMEANS.model_copy(update={"coarse_clusters": 4}),
                          index=IndexConfig(exact_below=1000, train_size=1500, nlist=16, nprobe=4, recall_sample=40)),
    # The balanced strategy's first level trains on at most kmeans.train_sample vectors; here the whole pool.
    "balanced": RetrieveConfig(strategy="hierarchical_balanced", queries=SETS[2:],
                               kmeans=KMEANS.model_copy(update={"train_sample": 5000}),
                               balanced=BalancedConfig(levels=[24, 6], resampling_steps=1, target_size=500)),
}
TIMINGS = ("train_seconds", "add_seconds", "queries_per_second")


def outputs(stage_uri: str, commit: dict) -> dict:
    """What a run decided, in plain JSON: every selection row, every pool image's cluster, the stats."""
    sel = read_selection(stage_uri).to_pylist()
    assignments = read_table(os.path.join(stage_uri, "assignments.parquet")).to_pydict()
    return {
        "selection": [[r["source"], r["query_dataset"], r["query_id"], r["key"], r["shard"], r["rule"], r["cluster"],
                       r["similarity"]] for r in sel],
        "assignment_keys": assignments["key"][:: 97],
        "clusters": assignments["cluster"],
        "similarities": assignments["similarity"],
        "centroids": read_centroids(stage_uri).astype(float).round(6).tolist(),
        "datasets": read_dataset_stats(stage_uri),
        "counts": commit["counts"],
        "index": {k: v for k, v in commit["extra"].get("index", {}).items() if k not in TIMINGS},
        "cluster_sizes": commit["extra"]["cluster_sizes"],
    }


def run_all(root: str) -> dict:
    embed = os.path.join(root, "embed")
    write_synthetic_embed_stage(embed, POOL, QUERIES)
    got = {}
    for name, cfg in CONFIGS.items():
        out = os.path.join(root, f"retrieve-{name}")
        got[name] = outputs(out, run_retrieve(embed, out, cfg))
    return got


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_all(str(tmp_path_factory.mktemp("sharded")))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_small_pools_decide_what_the_in_memory_path_decided(runs, name):
    with open(GOLDEN) as f:
        want = json.load(f)[name]
    got = runs[name]
    assert len(got["selection"]) == len(want["selection"]) > 0
    for g, w in zip(got["selection"], want["selection"]):
        assert g[:7] == w[:7]
        assert g[7] == pytest.approx(w[7], abs=1e-6)
    assert got["assignment_keys"] == want["assignment_keys"]
    assert got["clusters"] == want["clusters"]
    np.testing.assert_allclose(got["similarities"], want["similarities"], atol=1e-6)
    np.testing.assert_allclose(got["centroids"], want["centroids"], atol=2e-6)
    for key in ("datasets", "counts", "cluster_sizes"):
        assert got[key] == want[key], key
    index, pinned = dict(got["index"]), dict(want["index"])
    if index.pop("recall_pool", None) is not None:
        # The pool is larger than index.train_size: recall is now measured on a seeded sample of that many
        # pool vectors (tests/retrieve/test_index.py checks it against a reference), not on the whole pool.
        assert got["index"]["recall_pool"] == CONFIGS[name].index.train_size < POOL.n
        assert 0.0 <= index.pop("recall_at_k") <= 1.0
        pinned.pop("recall_at_k")
    assert index == pinned



def test_balanced_first_level_trains_on_a_sample_and_assigns_every_shard(tmp_path):
    from tasks.embed.run import open_pool_embeddings
    from tasks.retrieve.balanced import hierarchical_kmeans

    embed = str(tmp_path / "embed")
    write_synthetic_embed_stage(embed, POOL, {})
    pool = open_pool_embeddings(embed)
    cfg = BalancedConfig(levels=[12, 3], resampling_steps=1, target_size=100, n_iter=5)
    h = hierarchical_kmeans(pool, cfg, use_gpu=False, train_sample=800)
    x = pool.take(np.arange(len(pool)))  # the reference: the whole pool in one array
    d = ((x[:, None, :] - h.centroids[0][None]) ** 2).sum(-1)
    # Every image of every shard is assigned to its nearest first-level centroid (L2), ties aside.
    assert h.labels[0].shape == (POOL.n,)
    np.testing.assert_allclose(d[np.arange(POOL.n), h.labels[0]], d.min(1), atol=1e-5)
    unit = h.centroids[0] / np.linalg.norm(h.centroids[0], axis=1, keepdims=True)
    cosine = (x * unit[h.labels[0]]).sum(1) / np.linalg.norm(x, axis=1)  # stored float16 rows are near-unit
    np.testing.assert_allclose(h.similarities, cosine, atol=1e-5)
    # Trained on 800 sampled vectors, not on the pool: the centroids differ from a fit on all of it.
    whole = hierarchical_kmeans(pool, cfg, use_gpu=False)
    assert not np.allclose(whole.centroids[0], h.centroids[0])
    assert [len(lab) for lab in h.labels] == [POOL.n, 12]

if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    import faiss

    faiss.omp_set_num_threads(1)  # as tests/retrieve/conftest.py runs it
    with tempfile.TemporaryDirectory() as tmp:
        result = run_all(tmp)
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w") as f:
        json.dump(result, f, separators=(",", ":"))
    print({k: (len(v["selection"]), v["counts"], v["index"]) for k, v in result.items()})

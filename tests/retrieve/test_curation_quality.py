"""End-to-end retrieval on real packaged images: Fashion-MNIST queries against a mixed pool.

The embedder is the normalised-pixel descriptor ("pixels:32"): no trained SSL model exists
offline, and random-init ViT features are too weak to retrieve by. The floors below are what
this simple descriptor reaches; a real SSL backbone should only raise them.
"""

from collections import Counter

import numpy as np
import pytest

from storage.commit import read_commit
from tasks.embed.config import EmbedConfig
from tasks.embed.run import EmbeddingMismatch, embed_query_set, embed_shard, finalize_embed
from tasks.queries.config import QuerySetConfig
from tasks.queries.sets import QuerySetError
from tasks.retrieve.config import IndexConfig, KMeansConfig, RetrieveConfig
from tasks.retrieve.kmeans import KMeansError
from tasks.retrieve.layout import read_centroids, read_selection
from tasks.retrieve.run import run_retrieve
from storage.tables import read_table
from tests.support.curation_pool import build_pool

ECFG = EmbedConfig(backbone="pixels:32", batch_size=128)


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("curation")
    pool = build_pool(str(root))
    stage = str(root / "embed")
    sets = [QuerySetConfig(name="fmnist", uri=pool.query_dir, rule="sample", n_neighbours=4),
            QuerySetConfig(name="fmnist_c", uri=pool.query_dir, rule="cluster", per_cluster=30),
            QuerySetConfig(name="fmnist_as_is", uri=pool.query_dir, rule="as-is")]
    summaries = [embed_shard(u, None, stage, ECFG) for u in pool.shard_urls]
    queries = [embed_query_set(qs, stage, ECFG) for qs in sets]
    finalize_embed(stage, summaries, ECFG, "crawl-digest", queries)
    return pool, stage, sets, root


def score(pool, rows):
    keys = [r["key"] for r in rows if r["source"] == "pool"]
    domains = Counter(pool.domain[k] for k in keys)
    classes = Counter(pool.label[k] for k in keys if k in pool.label)
    return keys, domains["fmnist"] / len(keys), classes


def test_sample_rule_selects_in_domain_images_with_balanced_classes(curated):
    pool, stage, sets, root = curated
    cfg = RetrieveConfig(queries=[sets[0]], kmeans=KMeansConfig(n_clusters=40), index=IndexConfig(exact_below=100_000))
    commit = run_retrieve(stage, str(root / "r-sample"), cfg)
    rows = read_selection(str(root / "r-sample")).to_pylist()
    keys, precision, classes = score(pool, rows)
    # Measured with pixels:32: 372 images, precision 0.95, smallest class 15 of ~37 on average.
    assert len(keys) == len(set(keys)) >= 300
    assert precision >= 0.9
    assert len(classes) == 10 and min(classes.values()) >= 0.3 * len(keys) / 10
    assert commit["counts"]["collisions"] == 4 * 200 - len(keys)
    assert commit["extra"]["index"]["factory"] == "Flat" and commit["extra"]["index"]["recall_at_k"] == 1.0
    assert all(r["rule"] == "sample" and r["query_dataset"] == "fmnist" and r["query_id"] for r in rows)
    assert all(r["query_label"].startswith("class") for r in rows)
    # Assignments cover the whole pool; centroids are unit norm.
    assign = read_table(str(root / "r-sample" / "assignments.parquet"))
    assert assign.num_rows == 2000 and max(assign.column("cluster").to_pylist()) < 40
    np.testing.assert_allclose(np.linalg.norm(read_centroids(str(root / "r-sample")), axis=1), 1, atol=1e-5)


def test_cluster_rule_and_as_is_images_join_the_selection(curated):
    pool, stage, sets, root = curated
    cfg = RetrieveConfig(queries=sets[1:], kmeans=KMeansConfig(n_clusters=40))
    commit = run_retrieve(stage, str(root / "r-cluster"), cfg)
    rows = read_selection(str(root / "r-cluster")).to_pylist()
    keys, precision, classes = score(pool, rows)
    assert precision >= 0.8 and len(classes) == 10
    as_is = [r for r in rows if r["source"] == "query"]
    assert len(as_is) == 200 and {r["rule"] for r in as_is} == {"as-is"} and all(r["key"] is None for r in as_is)
    stats = {d["dataset"]: d for d in commit["extra"]["datasets"]}
    assert stats["fmnist_c"]["qualifying_clusters"] >= 5
    assert stats["fmnist_c"]["selected"] == len(keys) <= 30 * stats["fmnist_c"]["qualifying_clusters"]


def test_rerun_is_skipped_and_bad_inputs_fail_before_work(curated, tmp_path):
    pool, stage, sets, root = curated
    cfg = RetrieveConfig(queries=[sets[0]], kmeans=KMeansConfig(n_clusters=40))
    first = run_retrieve(stage, str(tmp_path / "r"), cfg)
    assert run_retrieve(stage, str(tmp_path / "r"), cfg) == first
    with pytest.raises(KMeansError, match="larger than the pool"):
        run_retrieve(stage, str(tmp_path / "big-k"), cfg.model_copy(update={"kmeans": KMeansConfig(n_clusters=5000)}))
    with pytest.raises(QuerySetError, match="never|embed it first"):
        run_retrieve(stage, str(tmp_path / "nq"), RetrieveConfig(queries=[QuerySetConfig(name="other", uri="x")]))
    assert not (tmp_path / "big-k").exists() and not (tmp_path / "nq").exists()


def test_dimension_mismatch_between_pool_and_queries_is_refused(curated, tmp_path):
    pool, _, sets, _ = curated
    stage = str(tmp_path / "embed")
    s = embed_shard(pool.shard_urls[0], None, stage, ECFG)
    q = embed_query_set(sets[0], stage, EmbedConfig(backbone="pixels:16"))
    # The embed stage itself refuses to commit mixed models ...
    with pytest.raises(EmbeddingMismatch):
        finalize_embed(stage, [s], ECFG, "d", [q])
    finalize_embed(stage, [s], ECFG, "d")
    # ... and retrieval checks the dimensions again before clustering.
    with pytest.raises(EmbeddingMismatch, match="1024-d"):
        run_retrieve(stage, str(tmp_path / "r"), RetrieveConfig(queries=[sets[0]], kmeans=KMeansConfig(n_clusters=4)))


def test_hierarchical_balanced_strategy_spreads_over_sources(curated):
    pool, stage, _, root = curated
    cfg = RetrieveConfig(strategy="hierarchical_balanced", balanced=dict(levels=[100, 10], target_size=500, resampling_steps=2))
    commit = run_retrieve(stage, str(root / "r-bal"), cfg)
    rows = read_selection(str(root / "r-bal")).to_pylist()
    domains = Counter(pool.domain[r["key"]] for r in rows)
    assert len(rows) == 500 and commit["counts"]["clusters"] == 100
    # The pool is 50% Fashion-MNIST; balanced sampling thins the dominant concept. The varied photo
    # crops spread over more clusters than the compact 8x8 digits, so they keep the larger share.
    assert domains["fmnist"] / 500 < 0.45 and domains["digits"] > 25 and domains["photo"] > 100
    assert read_commit(str(root / "r-bal"))["extra"]["strategy"] == "hierarchical_balanced"


def test_compressed_index_and_two_level_kmeans_in_the_stage(curated, tmp_path):
    pool, stage, sets, _ = curated
    cfg = RetrieveConfig(
        queries=[sets[0]],
        kmeans=KMeansConfig(n_clusters=40, coarse_clusters=5),
        index=IndexConfig(exact_below=0, nlist=8, pq_m=256, nprobe=8, factory="IVF{nlist},PQ{m}x4fs,RFlat"),
    )
    commit = run_retrieve(stage, str(tmp_path / "r"), cfg)
    info = commit["extra"]["index"]
    assert info["factory"] == "IVF8,PQ256x4fs,RFlat" and info["queries"] == 200
    assert 0.8 <= info["recall_at_k"] <= 1.0
    assert commit["counts"]["clusters"] == 40
    _, precision, classes = score(pool, read_selection(str(tmp_path / "r")).to_pylist())
    assert precision >= 0.85 and len(classes) == 10

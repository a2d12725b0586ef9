import numpy as np
import pytest

from tasks.queries.config import QuerySetConfig
from tasks.retrieve.balanced import Hierarchy, balanced_sample, hierarchical_kmeans, water_fill
from tasks.retrieve.config import BalancedConfig, IndexConfig
from tasks.retrieve.index import build_index
from tasks.retrieve.kmeans import normalise_rows
from tasks.retrieve.selection import Picks, cluster_rule, merge_picks, sample_rule


def picks(name, pool, query, sim, rule="sample", queries=0):
    return Picks(name, rule, np.array(pool, np.int64), np.array(query, np.int64), np.array(sim, np.float32), queries)


def test_collisions_keep_the_best_similarity_and_are_counted_against_the_loser():
    a = picks("a", [1, 2, 2, 3], [0, 0, 1, 1], [0.9, 0.5, 0.7, 0.4])  # pool 2 twice within a
    b = picks("b", [3, 4, 1], [0, 0, 1], [0.8, 0.6, 0.95])  # pool 3 and 1 also picked by a
    sel = merge_picks([a, b], [None, None])
    got = {int(p): (sel.datasets[d].dataset, round(float(s), 2)) for p, d, s in
           zip(sel.pool_rows, sel.dataset_index, sel.similarity)}
    assert got == {1: ("b", 0.95), 2: ("a", 0.7), 3: ("b", 0.8), 4: ("b", 0.6)}
    sa, sb = sel.stats
    assert (sa["candidates"], sa["collisions"], sa["selected"]) == (4, 1 + 2, 1)
    assert (sb["candidates"], sb["collisions"], sb["selected"]) == (3, 0, 3)
    # Every candidate is accounted for: selected + collisions + capped + below threshold.
    for s in sel.stats:
        assert s["selected"] + s["collisions"] + s["capped"] + s["below_min_similarity"] == s["candidates"]


def test_caps_keep_the_most_similar_and_min_similarity_drops_weak_picks():
    a = picks("a", [10, 11, 12, 13, 14], [0, 1, 2, 3, 4], [0.1, 0.9, 0.5, 0.7, 0.3])
    sel = merge_picks([a], [2], min_similarity=0.2)
    assert sorted(sel.pool_rows.tolist()) == [11, 13]
    assert sel.stats[0]["capped"] == 2 and sel.stats[0]["below_min_similarity"] == 1
    total = merge_picks([a, picks("b", [20, 21], [0, 0], [0.95, 0.05])], [None, None], max_total=3)
    assert sorted(total.pool_rows.tolist()) == [11, 13, 20] and total.dropped_total_cap == 4


def test_sample_rule_takes_the_n_nearest_per_query():
    rng = np.random.default_rng(0)
    pool = normalise_rows(rng.standard_normal((300, 16)))
    queries = normalise_rows(rng.standard_normal((7, 16)))
    built = build_index(pool, IndexConfig(exact_below=10_000))
    p = sample_rule(QuerySetConfig(name="q", uri="x", n_neighbours=3), queries, built)
    ref = np.argsort(-(queries @ pool.T), axis=1)[:, :3]
    np.testing.assert_array_equal(p.pool_rows.reshape(7, 3), ref)
    np.testing.assert_array_equal(p.query_rows, np.repeat(np.arange(7), 3))


def test_cluster_rule_takes_m_images_from_clusters_with_more_than_the_minimum_queries():
    rng = np.random.default_rng(1)
    centroids = np.eye(4, 8, dtype=np.float32)
    pool_labels = np.repeat(np.arange(4), 50)
    pool = normalise_rows(centroids[pool_labels] + 0.1 * rng.standard_normal((200, 8)))
    # 5 queries near cluster 0, 4 near cluster 2, 3 near cluster 3 (not more than 3), none near cluster 1.
    q_labels = np.array([0] * 5 + [2] * 4 + [3] * 3)
    queries = normalise_rows(centroids[q_labels] + 0.1 * rng.standard_normal((12, 8)))
    qs = QuerySetConfig(name="q", uri="x", rule="cluster", per_cluster=20, min_queries_per_cluster=3)
    p = cluster_rule(qs, queries, pool, centroids, pool_labels, seed=0)
    assert p.stats["qualifying_clusters"] == 2
    assert np.bincount(pool_labels[p.pool_rows], minlength=4).tolist() == [20, 0, 20, 0]
    assert len(set(p.pool_rows.tolist())) == 40
    # Each pick is credited to its most similar query of the same cluster.
    sims = pool[p.pool_rows] @ queries.T
    sims[pool_labels[p.pool_rows][:, None] != q_labels[None, :]] = -np.inf
    np.testing.assert_array_equal(p.query_rows, np.argmax(sims, axis=1))
    np.testing.assert_allclose(p.similarity, sims.max(axis=1), atol=1e-6)


def brute_force_water_fill(sizes, target):
    """The equal-share level found by trying every level."""
    for t in range(max(sizes) + 1):
        if sum(min(s, t + 1) for s in sizes) > target:
            return [min(s, t) for s in sizes]
    return list(sizes)


@pytest.mark.parametrize("sizes,target", [([5, 1, 9, 3], 10), ([100, 2, 2], 50), ([4, 4, 4], 12), ([7, 3], 100), ([3, 8, 8, 1], 13)])
def test_water_fill_matches_brute_force_and_sums_exactly(sizes, target):
    alloc = water_fill(np.array(sizes), target, np.random.default_rng(0))
    base = brute_force_water_fill(sizes, target)
    assert alloc.sum() == min(target, sum(sizes))
    assert all(b <= a <= s for a, b, s in zip(alloc, base, sizes))
    assert all(a - b <= 1 for a, b in zip(alloc, base))


def test_balanced_sampling_equalises_clusters_of_very_different_sizes():
    # Two top clusters; the first holds leaves of 200 and 100 points, the second one leaf of 10.
    labels0 = np.repeat([0, 1, 2], [200, 100, 10])
    h = Hierarchy(
        centroids=[np.zeros((3, 2), np.float32), np.zeros((2, 2), np.float32)],
        labels=[labels0, np.array([0, 0, 1])],
        similarities=np.linspace(1, 0, 310).astype(np.float32),
    )
    rows = balanced_sample(h, BalancedConfig(levels=[3, 2], target_size=90, seed=0))
    counts = np.bincount(labels0[rows], minlength=3)
    # Top level: 10 (all of the small branch) + 80; inside the first branch 40 + 40.
    assert counts.tolist() == [40, 40, 10]
    closest = balanced_sample(h, BalancedConfig(levels=[3, 2], target_size=90, pick="closest"))
    assert closest[labels0[closest] == 0].tolist() == list(range(40))


def test_hierarchical_kmeans_levels_and_resampling():
    rng = np.random.default_rng(3)
    x = normalise_rows(rng.standard_normal((600, 12)))
    cfg = BalancedConfig(levels=[40, 8, 2], resampling_steps=2, resample_size=3, target_size=100, n_iter=10)
    h = hierarchical_kmeans(x, cfg)
    assert [c.shape[0] for c in h.centroids] == [40, 8, 2]
    assert [len(lab) for lab in h.labels] == [600, 40, 8]
    rows = balanced_sample(h, cfg)
    assert len(rows) == 100 and len(set(rows.tolist())) == 100


def test_retrieve_config_validation():
    from pydantic import ValidationError

    from tasks.retrieve.config import RetrieveConfig

    RetrieveConfig()  # constructible empty, so it can sit inside larger configs
    with pytest.raises(ValueError, match="at least one query set"):
        RetrieveConfig().require_queries()
    with pytest.raises(ValueError, match="only takes as-is"):
        RetrieveConfig(strategy="hierarchical_balanced", queries=[QuerySetConfig(name="a", uri="x")]).require_queries()
    with pytest.raises(ValidationError, match="unique"):
        RetrieveConfig(queries=[QuerySetConfig(name="a", uri="x"), QuerySetConfig(name="a", uri="y")])
    with pytest.raises(ValidationError):
        QuerySetConfig(name="a", uri="x", rule="nearest")
    with pytest.raises(ValidationError):
        RetrieveConfig(unknown=1)


def _potential(x, centres):
    from tasks.retrieve.balanced import _sq_dist

    return float(_sq_dist(x, centres).min(1).sum())


def test_kmeans_plusplus_seeds_as_well_as_scikit_learns():
    from sklearn.cluster import kmeans_plusplus as sk_plusplus

    from tasks.retrieve.balanced import kmeans_plusplus

    rng = np.random.default_rng(0)
    blobs = rng.standard_normal((30, 8)) * 10
    x = (blobs[rng.integers(30, size=3000)] + rng.standard_normal((3000, 8))).astype(np.float32)
    ours = [_potential(x, kmeans_plusplus(x, 30, np.random.default_rng(s))) for s in range(6)]
    theirs = [_potential(x, sk_plusplus(x, 30, random_state=s)[0]) for s in range(6)]
    rand = [_potential(x, x[np.random.default_rng(s).choice(3000, 30, replace=False)]) for s in range(6)]
    # The same greedy D^2 seeding: potentials agree on average, and are far below random seeding's.
    assert abs(np.mean(ours) / np.mean(theirs) - 1) < 0.15
    assert np.mean(ours) < 0.5 * np.mean(rand)
    centres = kmeans_plusplus(x, 30, np.random.default_rng(0))
    assert all((x == c).all(1).any() for c in centres)  # seeds are data points
    assert len(np.unique(centres, axis=0)) == 30


def _long_tail(rng, n_concepts=40, dim=16, largest=4000):
    """Concepts with Zipf sizes (largest, largest/2, largest/3, ...) around random unit directions."""
    sizes = np.maximum(largest // np.arange(1, n_concepts + 1), 5)
    centres = normalise_rows(rng.standard_normal((n_concepts, dim)))
    concept = np.repeat(np.arange(n_concepts), sizes)
    x = normalise_rows(centres[concept] + 0.25 * rng.standard_normal((len(concept), dim)) / np.sqrt(dim))
    return x, concept


def test_resampling_moves_centroids_from_the_dense_concepts_to_the_rare_ones():
    x, concept = _long_tail(np.random.default_rng(1))
    share = {}
    for steps in (0, 10):
        cfg = BalancedConfig(levels=[80], resampling_steps=steps, target_size=10, n_iter=20)
        h = hierarchical_kmeans(x, cfg, use_gpu=False)
        # Which concept each centroid sits in: the majority concept of its members.
        owner = [np.bincount(concept[h.labels[0] == c], minlength=40).argmax() for c in range(80)
                 if (h.labels[0] == c).any()]
        share[steps] = np.mean(np.isin(owner, [0, 1]))  # centroids spent on the two largest concepts
    assert share[10] < 0.8 * share[0], share


def test_first_level_split_and_per_level_settings():
    from pydantic import ValidationError

    rng = np.random.default_rng(2)
    x = normalise_rows(rng.standard_normal((500, 8)))
    cfg = BalancedConfig(levels=[5, 12], split=4, resampling_steps=[0, 3], resample_size=[3, 2], target_size=50,
                         n_iter=5)
    h = hierarchical_kmeans(x, cfg, use_gpu=False)
    assert [c.shape[0] for c in h.centroids] == [20, 12] and h.labels[0].max() < 20
    assert np.all(np.abs(h.similarities) <= 1 + 1e-5)
    assert len(balanced_sample(h, cfg)) == 50
    with pytest.raises(ValidationError, match="3 values for 2 levels"):
        BalancedConfig(levels=[5, 2], resampling_steps=[1, 2, 3])
    with pytest.raises(ValidationError, match="grow upwards"):
        BalancedConfig(levels=[5, 30], split=4)
    BalancedConfig(levels=[5, 20], split=4)

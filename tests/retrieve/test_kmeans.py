import numpy as np
import pytest

from tasks.retrieve.config import KMeansConfig
from tasks.retrieve.kmeans import (
    KMeansError,
    assign,
    fit_kmeans,
    normalise_rows,
    spherical_kmeans,
    split_counts,
    two_level_kmeans,
)


def blobs(n_per: int, k: int, d: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = normalise_rows(rng.standard_normal((k, d)))
    x = np.repeat(centres, n_per, axis=0) + spread * rng.standard_normal((n_per * k, d))
    return normalise_rows(x), np.repeat(np.arange(k), n_per)


def numpy_spherical_lloyd(x, init, n_iter):
    c = init.copy()
    for _ in range(n_iter):
        labels = np.argmax(x @ c.T, axis=1)
        for j in range(c.shape[0]):
            members = x[labels == j]
            if len(members):
                c[j] = members.sum(axis=0)
        c = normalise_rows(c)
    return c


def test_faiss_spherical_kmeans_matches_numpy_lloyd_from_the_same_init():
    x, _ = blobs(60, 8, 16, 0.6, seed=1)
    init = x[np.random.default_rng(2).choice(len(x), 8, replace=False)]
    ours = spherical_kmeans(x, 8, n_iter=10, init_centroids=init)
    ref = numpy_spherical_lloyd(x, init, 10)
    # Same clusters in the same order, same centroids up to float32 rounding.
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_kmeans_clusters_are_pure_on_separated_blobs():
    x, truth = blobs(50, 6, 32, 0.05, seed=3)
    res = fit_kmeans(x, KMeansConfig(n_clusters=12, n_iter=20, n_redo=2, seed=0))
    # Over-clustering never mixes two blobs, and every blob is found.
    for f in np.unique(res.labels):
        assert len(np.unique(truth[res.labels == f])) == 1
    assert len(np.unique(truth)) == len({int(truth[res.labels == f][0]) for f in np.unique(res.labels)})
    assert res.sizes().sum() == len(x)


def test_assign_in_batches_equals_brute_force_argmax():
    x, _ = blobs(40, 5, 8, 1.0, seed=4)
    c = normalise_rows(np.random.default_rng(5).standard_normal((7, 8)))
    labels, sims = assign(x, c, batch_size=17)
    s = x @ c.T
    np.testing.assert_array_equal(labels, np.argmax(s, axis=1))
    np.testing.assert_allclose(sims, s.max(axis=1), atol=1e-5)


def test_training_sample_is_seeded_and_bounded():
    x, _ = blobs(100, 4, 8, 0.5, seed=6)
    a = spherical_kmeans(x, 4, train_sample=50, seed=7)
    b = spherical_kmeans(x, 4, train_sample=50, seed=7)
    np.testing.assert_array_equal(a, b)


def test_split_counts_are_proportional_bounded_and_exact():
    sizes = np.array([100, 10, 1, 40, 3])
    for k in (5, 9, 30, 154):
        counts = split_counts(sizes, k)
        assert counts.sum() == k
        assert (counts >= 1).all() and (counts <= sizes).all()
    np.testing.assert_array_equal(split_counts(np.array([60, 30, 10]), 10), [6, 3, 1])
    with pytest.raises(KMeansError):
        split_counts(sizes, 3)


def test_two_level_kmeans_gives_k_centroids_close_to_one_level_quality():
    x, _ = blobs(40, 20, 16, 0.3, seed=8)
    two = two_level_kmeans(x, 20, 4, n_iter=20, seed=0)
    one = spherical_kmeans(x, 20, n_iter=20, seed=0)
    assert two.shape == (20, 16)
    _, s2 = assign(x, two)
    _, s1 = assign(x, one)
    assert s2.mean() > 0.95 * s1.mean()
    res = fit_kmeans(x, KMeansConfig(n_clusters=20, coarse_clusters=4, n_iter=20))
    assert res.centroids.shape == (20, 16) and res.labels.max() < 20


def test_more_clusters_than_vectors_is_refused():
    x, _ = blobs(2, 2, 4, 0.1)
    with pytest.raises(KMeansError, match="larger than"):
        fit_kmeans(x, KMeansConfig(n_clusters=5))

import numpy as np
import pytest

from tasks.datasets import fashion_mnist
from tasks.retrieve.config import IndexConfig
from tasks.retrieve.index import build_index, default_pq_m, factory_string, measure_recall, recall_at_k
from tasks.retrieve.kmeans import normalise_rows


@pytest.fixture(scope="module")
def fmnist_vectors():
    """Real vectors: mean-centred, L2-normalised Fashion-MNIST pixels (784-d)."""
    data = fashion_mnist.load("test").subset(5000, seed=0)
    x = data.images.reshape(len(data), -1).astype(np.float32)
    return normalise_rows(x - x.mean(axis=1, keepdims=True))


def test_recall_at_k_counts_shared_ids():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert recall_at_k(approx, exact) == pytest.approx((2 / 4 + 1) / 2)


def test_small_pools_use_exact_search_identical_to_numpy(fmnist_vectors):
    x, q = fmnist_vectors[:1000], fmnist_vectors[4000:4050]
    built = build_index(x, IndexConfig(exact_below=10_000))
    assert built.factory == "Flat"
    sims, ids = built.search(q, 5)
    ref = np.argsort(-(q @ x.T), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(sims, np.take_along_axis(q @ x.T, ref, axis=1), atol=1e-5)


def test_factory_string_fills_nlist_and_pq_m():
    cfg = IndexConfig(exact_below=100)
    assert factory_string(cfg, 1_000_000, 768) == "IVF4000,PQ192x4fs"
    assert factory_string(IndexConfig(exact_below=0, train_size=3900), 1_000_000, 768).startswith("IVF100,")
    assert default_pq_m(100) == 25
    with pytest.raises(ValueError, match="divide"):
        factory_string(IndexConfig(exact_below=0, pq_m=7), 10_000, 64)


def test_ivf_pq_recall_against_exact_search(fmnist_vectors):
    x, q = fmnist_vectors[:3000], fmnist_vectors[4500:]
    cfg = dict(exact_below=0, nlist=16, nprobe=4, pq_m=98)
    built = build_index(x, IndexConfig(factory="IVF{nlist},PQ{m}x4fs", **cfg))
    assert built.factory == "IVF16,PQ98x4fs"
    report = measure_recall(built, x, q, k=4, sample=200, seed=0)
    assert report["queries"] == 200
    assert 0.4 <= report["recall_at_k"] < 1.0
    # Probing every list and re-ranking 8x the candidates with the exact vectors comes close to exact search.
    cfg["nprobe"] = 16
    refined = build_index(x, IndexConfig(factory="IVF{nlist},PQ{m}x4fs,RFlat", refine_k_factor=8, **cfg))
    assert measure_recall(refined, x, q, k=4, sample=200)["recall_at_k"] >= max(0.9, report["recall_at_k"] + 0.2)

import numpy as np

from tasks.dedup.config import DedupConfig
from tasks.dedup.knn import build_index, index_description, knn_edges_bruteforce, threshold_edges


def _clustered(rng, n_centres, per, dim, noise):
    centres = rng.normal(size=(n_centres, dim))
    x = np.repeat(centres, per, axis=0) + noise * rng.normal(size=(n_centres * per, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _edges(index, x, k, thr, batch=64):
    out = set()
    for i, j, s in threshold_edges(index, x, 0, k, thr, batch):
        assert (s > thr).all() and (i != j).all()
        out |= set(zip(i.tolist(), j.tolist()))
    return out


def test_flat_index_edges_equal_bruteforce_knn():
    rng = np.random.default_rng(0)
    x = _clustered(rng, 40, 5, 32, 0.3)
    cfg = DedupConfig()
    index = build_index(32, len(x), cfg)
    index.add(x)
    assert index_description(32, len(x), cfg) == "Flat"
    for k, thr in ((4, 0.6), (64, 0.45), (2, 0.9)):
        assert _edges(index, x, k, thr) == knn_edges_bruteforce(x, k, thr)


def test_ivf_index_above_flat_max_finds_the_planted_groups():
    rng = np.random.default_rng(1)
    x = _clustered(rng, 600, 4, 64, 0.15)
    cfg = DedupConfig(flat_max=1000, ivf_codec="flat", ivf_nprobe=4096)
    index = build_index(64, len(x), cfg, train=x)
    index.add(x)
    assert index_description(64, len(x), cfg).startswith("IVF")
    # Every list probed: an IVF-Flat search is exact.
    assert _edges(index, x, 3, 0.8) == knn_edges_bruteforce(x, 3, 0.8)
    cfg8 = DedupConfig(flat_max=1000, ivf_codec="sq8", ivf_nprobe=16)
    index8 = build_index(64, len(x), cfg8, train=x)
    index8.add(x)
    ref = knn_edges_bruteforce(x, 3, 0.8)
    found = _edges(index8, x, 3, 0.8)
    assert len(found & ref) / len(ref) > 0.97

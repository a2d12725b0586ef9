import faiss
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


def test_mirror_aware_search_equals_the_better_of_both_orientations_by_brute_force():
    from PIL import Image

    from tasks.dedup.decode import trim_uniform_border
    from tasks.dedup.descriptor import DctColourEmbedder
    from tasks.dedup.knn import MirrorAwareIndex
    from tests.dedup.photos import photos

    emb = DctColourEmbedder()
    imgs = [trim_uniform_border(img.resize((256, max(1, round(256 * img.height / img.width))))) for _, img in photos()]
    x = emb(imgs)
    flipped = emb([img.transpose(Image.FLIP_LEFT_RIGHT) for img in imgs])
    # The mirror of a descriptor is the descriptor of the mirrored image.
    assert np.einsum("ij,ij->i", emb.mirror(x), flipped).min() > 0.999
    np.testing.assert_allclose(emb.mirror(emb.mirror(x)), x)
    index = MirrorAwareIndex(faiss.IndexFlatIP(emb.dim), emb.mirror)
    index.add(x)
    k = 5
    sims, nbrs = index.search(flipped, k)
    ref = np.maximum(flipped @ x.T, emb.mirror(flipped) @ x.T)
    ref_order = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    np.testing.assert_allclose(sims, np.take_along_axis(ref, ref_order, 1), atol=1e-5)
    assert (nbrs[:, 0] == np.arange(len(imgs))).all() and sims[:, 0].min() > 0.999
    assert all(len(set(row)) == k for row in nbrs.tolist())
    plain = faiss.IndexFlatIP(emb.dim)
    plain.add(x)
    assert np.median(plain.search(flipped, 1)[0][:, 0]) < 0.6  # a plain index misses flips


def test_merge_neighbours_keeps_each_id_once_at_its_best_score():
    from tasks.dedup.knn import merge_neighbours

    sims = np.array([[0.9, 0.5, 0.4, 0.95, 0.5, 0.1], [0.3, -1.0, -1.0, 0.2, 0.3, -1.0]], dtype=np.float32)
    nbrs = np.array([[1, 2, 3, 2, 1, 7], [4, -1, -1, 4, 5, -1]])
    s, n = merge_neighbours(sims, nbrs, 3)
    assert n.tolist() == [[2, 1, 3], [4, 5, -1]]
    np.testing.assert_allclose(s[0], [0.95, 0.9, 0.4])
    assert s[1, 2] == -np.inf

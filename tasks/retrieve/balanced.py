"""Query-free curation: hierarchical k-means with resampling, then balanced sampling over the tree.

Level 1 clusters the pool; level t clusters the centroids of level t-1. A resampling step re-fits
a level on the points nearest each of its centroids, which pulls the centroids towards a uniform
spread over the data instead of following its density. Sampling walks the tree top-down and
water-fills the target across children (every child gets the same share unless it is smaller), so
rare concepts keep their images and dominant ones are thinned (Vo et al. 2024). The defaults are
those of Meta's ssl-data-curation (see ``BalancedConfig``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from tasks.embed.run import PoolEmbeddings, gather, row_blocks
from tasks.retrieve.config import BalancedConfig
from tasks.retrieve.kmeans import KMeansError, assign, gpu_available, normalise_rows, sample_rows


@dataclass
class Hierarchy:
    """``labels[0]``: pool row -> level-1 cluster; ``labels[t]``: level-t cluster -> level-(t+1) cluster."""

    centroids: list[np.ndarray]
    labels: list[np.ndarray]
    similarities: np.ndarray  # pool row -> cosine similarity to its level-1 centroid


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared L2 distances (n, m), clamped at 0 against rounding."""
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0, out=d)


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding: each new centre is the best of 2 + ln k candidates drawn in
    proportion to the squared distance to the nearest centre so far (Arthur & Vassilvitskii)."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centres = np.empty((k, x.shape[1]), np.float32)
    centres[0] = x[rng.integers(n)]
    closest = _sq_dist(x, centres[:1])[:, 0]
    for i in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than centres: the rest repeat points at random
            centres[i:] = x[rng.choice(n, k - i)]
            break
        picks = np.minimum(np.searchsorted(np.cumsum(closest), rng.uniform(size=trials) * total), n - 1)
        cand = np.minimum(_sq_dist(x, x[picks]), closest[:, None])
        best = int(np.argmin(cand.sum(0)))
        centres[i], closest = x[picks[best]], cand[:, best]
    return centres


def fit(x: np.ndarray, k: int, cfg: BalancedConfig, seed: int, use_gpu: bool,
        init_centroids: np.ndarray | None = None) -> np.ndarray:
    """``k`` centroids of ``x`` by Lloyd's algorithm, seeded as ``cfg.init`` says (or from ``init_centroids``)."""
    x = np.ascontiguousarray(x, np.float32)
    if k > x.shape[0]:
        raise KMeansError(f"k={k} clusters is larger than the {x.shape[0]} vectors to cluster")
    if k == 1:
        c = x.mean(0, keepdims=True)
        return normalise_rows(c) if cfg.distance == "cosine" else c
    rng = np.random.default_rng(seed)
    if init_centroids is None and cfg.init == "kmeans++":
        init_centroids = kmeans_plusplus(x, k, rng)
    km = faiss.Kmeans(x.shape[1], k, niter=cfg.n_iter, spherical=cfg.distance == "cosine", seed=int(seed) % (2**31),
                      gpu=bool(use_gpu and gpu_available()), verbose=False,
                      max_points_per_centroid=max(1, math.ceil(x.shape[0] / k) + 1), min_points_per_centroid=1)
    km.train(x, init_centroids=None if init_centroids is None else np.ascontiguousarray(init_centroids, np.float32))
    return normalise_rows(km.centroids) if cfg.distance == "cosine" else np.array(km.centroids, np.float32)


def cosine_to_centroid(x: np.ndarray | PoolEmbeddings, centroids: np.ndarray, labels: np.ndarray,
                       batch: int = 65_536) -> np.ndarray:
    """Cosine similarity of every row to its own centroid, block by block. For unit rows it orders a
    cluster's members exactly as the L2 distance to the cluster's mean does, and it is what the
    selection records."""
    unit = normalise_rows(centroids)
    out = np.empty(x.shape[0], np.float32)
    for start, block in row_blocks(x, batch):
        stop = start + len(block)
        out[start:stop] = np.einsum("nd,nd->n", normalise_rows(block), unit[labels[start:stop]])
    return out


def closest_per_cluster(labels: np.ndarray, closeness: np.ndarray, size: int) -> np.ndarray:
    """Rows among the ``size`` closest to their own centroid, cluster by cluster (sorted)."""
    order = np.lexsort((-closeness, labels))
    starts = np.searchsorted(labels[order], labels[order], side="left")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - starts
    return np.flatnonzero(rank < size)


def _resample(points: np.ndarray, centroids: np.ndarray, size: int, steps: int, cfg: BalancedConfig, seed: int,
              use_gpu: bool) -> np.ndarray:
    k = centroids.shape[0]
    for step in range(steps):
        labels, close = assign(points, centroids, distance=cfg.distance)
        chosen = closest_per_cluster(labels, close, size)
        if len(chosen) < k:
            break
        centroids = fit(points[chosen], k, cfg, seed + step + 1, use_gpu,
                        init_centroids=centroids if cfg.refit == "previous" else None)
    return centroids


def _split(points: np.ndarray, coarse: np.ndarray, cfg: BalancedConfig, seed: int, use_gpu: bool) -> np.ndarray:
    """Every coarse cluster split into ``cfg.split`` clusters (fewer where it holds fewer points)."""
    labels, _ = assign(points, coarse, distance=cfg.distance)
    parts = [fit(points[labels == c], min(cfg.split, int((labels == c).sum())), cfg, seed + 1 + int(c), use_gpu)
             for c in np.unique(labels)]
    return np.concatenate(parts)


def hierarchical_kmeans(x: np.ndarray | PoolEmbeddings, cfg: BalancedConfig, use_gpu: bool = True,
                        train_sample: int | None = None) -> Hierarchy:
    """Cluster ``x`` (an array or a sharded pool) level by level as ``cfg.levels`` says (finest first).

    The first level is fitted (seeded, then split or resampled) on a seeded sample of at most
    ``train_sample`` pool vectors (None, or a smaller pool: all of them), and then the whole pool is
    assigned to it block by block (per shard of a sharded pool): only each image's label and cosine
    to its centroid are held. The levels above cluster centroids, which fit in memory.
    """
    n = x.shape[0]
    if cfg.levels[0] > n:
        raise KMeansError(f"balanced.levels[0]={cfg.levels[0]} clusters is larger than the pool ({n} vectors)")
    idx = sample_rows(n, None if train_sample is None else max(train_sample, cfg.levels[0]),
                      np.random.default_rng([cfg.seed, 1]))
    points = gather(x, np.arange(n) if idx is None else idx)
    steps, sizes = cfg.per_level("resampling_steps"), cfg.per_level("resample_size")
    centroids_per_level, labels_per_level = [], []
    pool_sims = None
    for level, k in enumerate(cfg.levels):
        seed = cfg.seed + 1000 * level
        if level > 0 and k > points.shape[0]:
            raise KMeansError(f"balanced.levels[{level}]={k} is larger than the {points.shape[0]} clusters below it")
        centroids = fit(points, k, cfg, seed, use_gpu)
        if level == 0 and cfg.split > 1:
            centroids = _split(points, centroids, cfg, seed, use_gpu)
        else:
            size = sizes[level] if sizes[level] is not None else points.shape[0] // (2 * k)
            if steps[level] and size > 1:
                centroids = _resample(points, centroids, size, steps[level], cfg, seed, use_gpu)
        labels, _ = assign(x if level == 0 else points, centroids, distance=cfg.distance)
        if level == 0:
            pool_sims = cosine_to_centroid(x, centroids, labels)
        centroids_per_level.append(centroids)
        labels_per_level.append(labels)
        points = centroids
    return Hierarchy(centroids_per_level, labels_per_level, pool_sims)


def water_fill(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``target`` across groups of ``sizes``: equal shares, capped by each size, summing exactly.

    The largest level t with sum(min(size, t)) <= target is found by bisection; the few left
    over go one each to random groups that still have room.
    """
    sizes = np.asarray(sizes, np.int64)
    total = int(sizes.sum())
    if target >= total:
        return sizes.copy()
    lo, hi = 0, int(sizes.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(sizes, mid).sum() <= target:
            lo = mid
        else:
            hi = mid - 1
    alloc = np.minimum(sizes, lo)
    rest = target - int(alloc.sum())
    if rest:
        room = np.flatnonzero(sizes > alloc)
        alloc[rng.choice(room, rest, replace=False)] += 1
    return alloc


def _groups(labels: np.ndarray, n: int) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(n)]


def balanced_sample(h: Hierarchy, cfg: BalancedConfig) -> np.ndarray:
    """Pool rows chosen by top-down water-filling over the hierarchy (sorted)."""
    rng = np.random.default_rng(cfg.seed)
    # children[t][c]: the level-t clusters (or pool rows for t = 0) under cluster c of level t+1.
    children = [_groups(h.labels[t], h.centroids[t].shape[0]) for t in range(len(h.labels))]
    sizes = [np.array([len(g) for g in children[0]], np.int64)]
    for t in range(1, len(children)):
        sizes.append(np.array([sizes[t - 1][g].sum() for g in children[t]], np.int64))
    chosen: list[np.ndarray] = []

    def descend(level: int, nodes: np.ndarray, target: int) -> None:
        alloc = water_fill(sizes[level][nodes], target, rng)
        for node, share in zip(nodes, alloc):
            if share == 0:
                continue
            if level == 0:
                members = children[0][node]
                if share >= len(members):
                    chosen.append(members)
                elif cfg.pick == "closest":
                    chosen.append(members[np.argsort(-h.similarities[members], kind="stable")[:share]])
                else:
                    chosen.append(rng.choice(members, share, replace=False))
            else:
                descend(level - 1, children[level][node], int(share))

    top = len(children) - 1
    descend(top, np.arange(h.centroids[top].shape[0]), cfg.target_size)
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)

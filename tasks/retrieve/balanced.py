"""Query-free curation: hierarchical k-means with resampling, then balanced sampling over the tree.

Level 1 clusters the pool; level t clusters the centroids of level t-1. Resampling steps re-fit
a level on the points nearest each centroid, pulling centroids towards a uniform spread over
the data instead of following its density. Sampling walks the tree top-down and water-fills the
target across children (every child gets the same share unless it is smaller), so rare
concepts keep their images and dominant ones are thinned (Vo et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.retrieve.config import BalancedConfig
from tasks.retrieve.kmeans import KMeansError, assign, spherical_kmeans


@dataclass
class Hierarchy:
    """``labels[0]``: pool row -> level-1 cluster; ``labels[t]``: level-t cluster -> level-(t+1) cluster."""

    centroids: list[np.ndarray]
    labels: list[np.ndarray]
    similarities: np.ndarray  # pool row -> similarity to its level-1 centroid


def _resample(points: np.ndarray, centroids: np.ndarray, size: int, steps: int, n_iter: int, seed: int,
              use_gpu: bool) -> np.ndarray:
    k = centroids.shape[0]
    for step in range(steps):
        labels, sims = assign(points, centroids)
        order = np.lexsort((-sims, labels))
        rank = np.empty(len(order), np.int64)
        starts = np.searchsorted(labels[order], labels[order], side="left")
        rank[order] = np.arange(len(order)) - starts
        chosen = np.flatnonzero(rank < size)
        if len(chosen) < k:
            break
        centroids = spherical_kmeans(points[chosen], k, n_iter=n_iter, seed=seed + step + 1, use_gpu=use_gpu,
                                     init_centroids=centroids)
    return centroids


def hierarchical_kmeans(x: np.ndarray, cfg: BalancedConfig, n_iter: int = 20, use_gpu: bool = True) -> Hierarchy:
    """Cluster ``x`` level by level as ``cfg.levels`` says (finest first)."""
    if cfg.levels[0] > x.shape[0]:
        raise KMeansError(f"balanced.levels[0]={cfg.levels[0]} clusters is larger than the pool ({x.shape[0]} vectors)")
    for lower, upper in zip(cfg.levels, cfg.levels[1:]):
        if upper > lower:
            raise KMeansError(f"balanced.levels must not grow upwards: {cfg.levels}")
    points = np.ascontiguousarray(x, np.float32)
    centroids_per_level, labels_per_level = [], []
    pool_sims = None
    for level, k in enumerate(cfg.levels):
        seed = cfg.seed + 1000 * level
        centroids = spherical_kmeans(points, k, n_iter=n_iter, seed=seed, use_gpu=use_gpu)
        if level > 0 and cfg.resampling_steps:
            centroids = _resample(points, centroids, cfg.resample_size, cfg.resampling_steps, n_iter, seed, use_gpu)
        labels, sims = assign(points, centroids)
        if level == 0:
            pool_sims = sims
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

"""Spherical k-means over L2-normalised embeddings with faiss (GPU when faiss sees one).

Centroids train on a seeded sample of the pool, then every vector is assigned block by block (per
embedding shard of a sharded pool, in batches within it), so memory stays bounded by the sample and
one block, and the assignment of each shard could run as its own part. For very large k the two-level mode clusters the pool
coarsely first and then splits each coarse cluster into its share of the k fine clusters, the
way large-scale curation pipelines reach millions of clusters.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import faiss
import numpy as np

from tasks.embed.run import PoolEmbeddings, gather, row_blocks
from tasks.retrieve.config import KMeansConfig
from lvd.errors import LvdError


class KMeansError(LvdError, ValueError):
    """Clustering that cannot run as asked (e.g. more clusters than vectors)."""


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Unit-norm rows (zero rows stay zero), float32."""
    x = _f32(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def gpu_available() -> bool:
    """Whether this faiss build sees a GPU."""
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def sample_rows(n: int, size: int | None, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted seeded sample of ``size`` of ``n`` rows, or None when all of them are wanted."""
    if size is None or n <= size:
        return None
    return np.sort(rng.choice(n, size=size, replace=False))


def spherical_kmeans(
    x: np.ndarray | PoolEmbeddings,
    k: int,
    *,
    n_iter: int = 20,
    train_sample: int | None = None,
    seed: int = 0,
    use_gpu: bool = True,
    init_centroids: np.ndarray | None = None,
    n_redo: int = 1,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Train ``k`` unit-norm centroids on (a seeded sample of) ``x`` (only its ``rows``, if given);
    returns float32 (k, d). Only the sample is read into memory."""
    n = x.shape[0] if rows is None else len(rows)
    if k < 1:
        raise KMeansError(f"k must be >= 1, got {k}")
    if k > n:
        raise KMeansError(f"k={k} clusters is larger than the {n} vectors to cluster")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    idx = sample_rows(n, None if train_sample is None else max(train_sample, k), rng)
    rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
    sample = gather(x, rows if idx is None else rows[idx])
    if k == 1:
        return normalise_rows(sample.mean(axis=0, keepdims=True))
    km = faiss.Kmeans(
        d,
        k,
        niter=n_iter,
        nredo=n_redo if init_centroids is None else 1,
        spherical=True,
        seed=int(seed) % (2**31),
        gpu=bool(use_gpu and gpu_available()),
        verbose=False,
        # The sample is already chosen here; faiss must not subsample it again.
        max_points_per_centroid=max(1, math.ceil(sample.shape[0] / k) + 1),
        min_points_per_centroid=1,
    )
    km.train(sample, init_centroids=None if init_centroids is None else _f32(init_centroids))
    return normalise_rows(km.centroids)


def assign(x: np.ndarray | PoolEmbeddings, centroids: np.ndarray, batch_size: int = 65_536,
           distance: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row, block by block (per shard of a sharded pool) -> (labels int64,
    closeness float32): the inner product (``distance="cosine"``, unit centroids) or minus the
    squared L2 distance (``"l2"``)."""
    index = faiss.IndexFlatIP(centroids.shape[1]) if distance == "cosine" else faiss.IndexFlatL2(centroids.shape[1])
    index.add(_f32(centroids))
    labels = np.empty(x.shape[0], np.int64)
    sims = np.empty(x.shape[0], np.float32)
    for start, block in row_blocks(x, batch_size):
        s, i = index.search(block, 1)
        stop = start + len(block)
        labels[start:stop], sims[start:stop] = i[:, 0], (s[:, 0] if distance == "cosine" else -s[:, 0])
    return labels, sims


def split_counts(sizes: np.ndarray, k: int) -> np.ndarray:
    """Fine clusters per coarse cluster: proportional to size, at least 1, at most size, summing to k."""
    sizes = np.asarray(sizes, np.int64)
    if k < len(sizes) or k > sizes.sum():
        raise KMeansError(f"cannot split {len(sizes)} clusters holding {sizes.sum()} vectors into {k}")
    share = sizes / sizes.sum() * k
    counts = np.clip(np.floor(share).astype(np.int64), 1, sizes)
    remainder = share - np.floor(share)
    while counts.sum() != k:
        if counts.sum() < k:
            room = np.where(counts < sizes, remainder + 1e-9 * sizes, -np.inf)
            j = int(np.argmax(room))
            counts[j] += 1
            remainder[j] -= 1
        else:
            room = np.where(counts > 1, -remainder, -np.inf)
            j = int(np.argmax(room))
            counts[j] -= 1
            remainder[j] += 1
    return counts


def two_level_kmeans(x: np.ndarray | PoolEmbeddings, k: int, coarse_k: int, *, n_iter: int = 20, train_sample: int | None = None,
                     seed: int = 0, use_gpu: bool = True, batch_size: int = 65_536) -> np.ndarray:
    """Coarse k-means into ``coarse_k`` clusters, then each split into its share of ``k`` (sums to k)."""
    if k > x.shape[0]:
        raise KMeansError(f"k={k} clusters is larger than the {x.shape[0]} vectors to cluster")
    coarse_k = min(coarse_k, k)
    coarse = spherical_kmeans(x, coarse_k, n_iter=n_iter, train_sample=train_sample, seed=seed, use_gpu=use_gpu)
    labels, _ = assign(x, coarse, batch_size)
    sizes = np.bincount(labels, minlength=coarse_k)
    nonempty = np.flatnonzero(sizes)
    counts = split_counts(sizes[nonempty], k)
    parts = []
    per_cluster_sample = None if train_sample is None else max(1, train_sample // coarse_k)
    for c, kc in zip(nonempty, counts):
        sample = per_cluster_sample if per_cluster_sample is None else max(per_cluster_sample, int(kc))
        parts.append(spherical_kmeans(x, int(kc), n_iter=n_iter, train_sample=sample, seed=seed + 1 + int(c),
                                      use_gpu=use_gpu, rows=np.flatnonzero(labels == c)))
    return np.concatenate(parts)


@dataclass
class KMeansResult:
    """Centroids and the assignment of every pool vector."""

    centroids: np.ndarray
    labels: np.ndarray
    similarities: np.ndarray
    train_seconds: float
    assign_seconds: float

    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.centroids.shape[0])


def fit_kmeans(x: np.ndarray | PoolEmbeddings, cfg: KMeansConfig) -> KMeansResult:
    """Cluster ``x`` as ``cfg`` says (one or two levels) and assign every vector."""
    if cfg.n_clusters > x.shape[0]:
        raise KMeansError(f"kmeans.n_clusters={cfg.n_clusters} is larger than the pool ({x.shape[0]} vectors)")
    start = time.perf_counter()
    kw = dict(n_iter=cfg.n_iter, train_sample=cfg.train_sample, seed=cfg.seed, use_gpu=cfg.use_gpu)
    if cfg.coarse_clusters is not None and cfg.coarse_clusters < cfg.n_clusters:
        centroids = two_level_kmeans(x, cfg.n_clusters, cfg.coarse_clusters, batch_size=cfg.assign_batch, **kw)
    else:
        centroids = spherical_kmeans(x, cfg.n_clusters, n_redo=cfg.n_redo, **kw)
    trained = time.perf_counter()
    labels, sims = assign(x, centroids, cfg.assign_batch)
    return KMeansResult(centroids, labels, sims, trained - start, time.perf_counter() - trained)

"""The copy-detection k-NN graph: faiss inner-product search, thresholded edges, streamed.

Pools up to ``flat_max`` descriptors use an exact ``IndexFlatIP``; larger pools an IVF index
(``nlist`` about 4 sqrt(n)) whose vectors are stored flat, as 8-bit scalars (SQ8) or as product
codes (PQ, d/8 bytes), trained on a sample. With faiss-gpu and a visible GPU the index moves to
all GPUs. Queries arrive in batches and only edges above the threshold leave a batch, so memory
is the index (n x code bytes, plus the IVF lists' 8-byte ids) plus O(batch x k) per call.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import faiss
import numpy as np

from tasks.dedup.config import DedupConfig


def ivf_factory(dim: int, n: int, codec: str) -> str:
    """faiss factory string of the IVF index used above ``flat_max`` vectors."""
    nlist = int(min(65_536, max(64, 4 * math.sqrt(n))))
    if codec == "flat":
        code = "Flat"
    elif codec == "sq8":
        code = "SQ8"
    else:
        m = next((m for m in (dim // 8, dim // 4, dim // 2) if m >= 1 and dim % m == 0), None)
        if m is None:
            raise ValueError(f"PQ needs a descriptor dimension divisible into sub-vectors; {dim} is not")
        code = f"PQ{m}"
    return f"IVF{nlist},{code}"


def index_description(dim: int, n: int, cfg: DedupConfig) -> str:
    """What :func:`build_index` builds for this size, for commit records and logs."""
    return "Flat" if n <= cfg.flat_max else ivf_factory(dim, n, cfg.ivf_codec)


def use_gpu(cfg: DedupConfig) -> bool:
    return cfg.use_gpu == "auto" and hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0


def build_index(dim: int, n: int, cfg: DedupConfig, train: np.ndarray | None = None) -> faiss.Index:
    """An empty inner-product index for ``n`` vectors; IVF indexes are trained on ``train``."""
    if n <= cfg.flat_max:
        index = faiss.IndexFlatIP(dim)
    else:
        if train is None or len(train) < 64:
            raise ValueError("an IVF index needs a training sample of descriptors")
        index = faiss.index_factory(dim, ivf_factory(dim, n, cfg.ivf_codec), faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        faiss.extract_index_ivf(index).nprobe = cfg.ivf_nprobe
    if use_gpu(cfg):
        index = faiss.index_cpu_to_all_gpus(index)
    return index


class GreyAwareIndex:
    """An inner-product index whose scores between a grey and a colour descriptor are divided by ``cap``.

    For descriptors whose colour dimensions ``colour_dims`` (start, stop) are zero on grey images
    and whose colour part holds a fixed share of the norm otherwise (the builtin descriptor), a
    grey/colour cosine equals ``cap`` times the cosine of the rest (luminance): dividing by ``cap``
    scores a grey copy as it would score in colour. One flag per indexed vector is kept (n bytes).
    """

    def __init__(self, index, colour_dims: tuple[int, int], cap: float) -> None:
        self.index = index
        self.colour_dims = colour_dims
        self.cap = float(cap)
        self._grey: list[np.ndarray] = []

    def grey(self, x: np.ndarray) -> np.ndarray:
        a, b = self.colour_dims
        return ~np.any(np.asarray(x)[:, a:b] != 0, axis=1)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)
        self._grey.append(self.grey(x))

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, nbrs = self.index.search(q, k)
        flags = np.concatenate(self._grey) if self._grey else np.zeros(0, bool)
        if len(self._grey) > 1:
            self._grey = [flags]
        mixed = (nbrs >= 0) & (flags[np.maximum(nbrs, 0)] != self.grey(q)[:, None])
        sims = np.where(mixed, sims / self.cap, sims)
        order = np.argsort(-sims, axis=1, kind="stable")
        return np.take_along_axis(sims, order, 1), np.take_along_axis(nbrs, order, 1)


def grey_aware(index, embedder):
    """``index`` wrapped in :class:`GreyAwareIndex` when the embedder names its colour part, else as is."""
    dims, cap = getattr(embedder, "colour_dims", None), getattr(embedder, "grey_pair_cap", None)
    return index if dims is None or cap is None else GreyAwareIndex(index, tuple(dims), cap)


class MirrorAwareIndex:
    """An index that scores each pair by the better of the query and its mirror image.

    ``mirror`` maps descriptors to their mirrored images' descriptors (an orthogonal involution,
    so ``q . mirror(x) == mirror(q) . x``): each search runs twice, with ``q`` and ``mirror(q)``,
    and keeps per neighbour the higher score. No second descriptor is stored.
    """

    def __init__(self, index, mirror) -> None:
        self.index = index
        self.mirror = mirror

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(q, dtype=np.float32)
        s1, n1 = self.index.search(q, k)
        s2, n2 = self.index.search(np.ascontiguousarray(self.mirror(q), dtype=np.float32), k)
        return merge_neighbours(np.concatenate([s1, s2], axis=1), np.concatenate([n1, n2], axis=1), k)


def merge_neighbours(sims: np.ndarray, nbrs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best distinct neighbours (each at its best score) of a list with repeats;
    missing slots are ``(-inf, -1)``."""
    sims = np.where(nbrs >= 0, sims, -np.inf)
    by_id = np.lexsort((-sims, nbrs), axis=-1)
    ids = np.take_along_axis(nbrs, by_id, 1)
    best = np.take_along_axis(sims, by_id, 1)
    repeat = np.zeros_like(ids, dtype=bool)
    repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
    best = np.where(repeat | (ids < 0), -np.inf, best)
    order = np.argsort(-best, axis=1, kind="stable")[:, :k]
    best, ids = np.take_along_axis(best, order, 1), np.take_along_axis(ids, order, 1)
    return best, np.where(np.isfinite(best), ids, -1)


def copy_index(index, embedder, cfg: DedupConfig):
    """``index`` as copy detection searches it: grey-aware (:func:`grey_aware`) and, with
    ``cfg.mirror`` and an embedder that can mirror its descriptors, mirror-aware."""
    index = grey_aware(index, embedder)
    if cfg.mirror and callable(getattr(embedder, "mirror", None)):
        index = MirrorAwareIndex(index, embedder.mirror)
    return index


def threshold_edges(
    index: faiss.Index, queries: np.ndarray, offset: int, k: int, threshold: float, batch: int = 8192
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(i, j, cosine)`` for each query row ``i`` (numbered from ``offset``) and each of its
    ``k`` nearest indexed rows ``j != i`` with cosine above ``threshold``."""
    kk = min(k + 1, index.ntotal)
    if kk == 0:
        return
    for start in range(0, len(queries), batch):
        q = np.ascontiguousarray(queries[start:start + batch], dtype=np.float32)
        sims, nbrs = index.search(q, kk)
        rows = np.arange(offset + start, offset + start + len(q))[:, None]
        keep = (nbrs >= 0) & (nbrs != rows) & (sims > threshold)
        if keep.any():
            yield np.broadcast_to(rows, nbrs.shape)[keep], nbrs[keep], sims[keep]


def knn_edges_bruteforce(x: np.ndarray, k: int, threshold: float) -> set[tuple[int, int]]:
    """Reference: every (i, j) with j among i's k nearest (by exhaustive dot products) above threshold."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    out = set()
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    for i in range(len(x)):
        for j in order[i]:
            if sims[i, j] > threshold:
                out.add((i, int(j)))
    return out

"""Inner-product nearest-neighbour index over the pool, from a faiss factory string.

Small pools get exact search (``IndexFlatIP``); large ones the configured compressed index
(IVF-PQ with 4-bit fast-scan codes by default, polysemous training off since it costs minutes
on CPU and is unused for inner-product search). Recall@k against exact search on a sample
says what the compression costs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import faiss
import numpy as np

from tasks.retrieve.config import IndexConfig


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def default_nlist(n: int, train_size: int | None = None) -> int:
    """About 4*sqrt(n) inverted lists, but never fewer than 39 training points per list."""
    train = n if train_size is None else min(n, train_size)
    return int(max(1, min(round(4 * math.sqrt(n)), train // 39)))


def default_pq_m(d: int) -> int:
    """d/4 sub-quantizers (rounded down to a divisor of d)."""
    m = max(1, d // 4)
    while d % m:
        m -= 1
    return m


def factory_string(cfg: IndexConfig, n: int, d: int) -> str:
    """The factory string used for a pool of ``n`` vectors of dimension ``d``."""
    if n < cfg.exact_below:
        return "Flat"
    nlist = cfg.nlist or default_nlist(n, cfg.train_size)
    m = cfg.pq_m or default_pq_m(d)
    if "{m}" in cfg.factory and d % m:
        raise ValueError(f"index.pq_m={m} does not divide the embedding dimension {d}")
    return cfg.factory.format(nlist=nlist, m=m)


def _disable_polysemous(index: faiss.Index) -> None:
    candidates = [index]
    try:
        candidates.append(faiss.extract_index_ivf(index))
    except RuntimeError:
        pass
    for idx in candidates:
        if hasattr(idx, "do_polysemous_training"):
            idx.do_polysemous_training = False


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Probe ``nprobe`` inverted lists per query (no-op for non-IVF indexes)."""
    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except RuntimeError:
        pass


@dataclass
class BuiltIndex:
    """A filled index plus how it was made."""

    index: faiss.Index
    factory: str
    train_seconds: float
    add_seconds: float

    def search(self, queries: np.ndarray, k: int, batch_size: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, pool rows) per query; rows are -1 where fewer than k were found."""
        sims = np.empty((queries.shape[0], k), np.float32)
        ids = np.empty((queries.shape[0], k), np.int64)
        for start in range(0, queries.shape[0], batch_size):
            stop = min(start + batch_size, queries.shape[0])
            sims[start:stop], ids[start:stop] = self.index.search(_f32(queries[start:stop]), k)
        return sims, ids


def build_index(x: np.ndarray, cfg: IndexConfig, add_batch: int = 262_144) -> BuiltIndex:
    """Train (on a seeded sample) and fill the index for pool vectors ``x``."""
    n, d = x.shape
    factory = factory_string(cfg, n, d)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    _disable_polysemous(index)
    start = time.perf_counter()
    if not index.is_trained:
        rng = np.random.default_rng(cfg.seed)
        sample = x if n <= cfg.train_size else x[np.sort(rng.choice(n, cfg.train_size, replace=False))]
        index.train(_f32(sample))
    trained = time.perf_counter()
    for s in range(0, n, add_batch):
        index.add(_f32(x[s : s + add_batch]))
    set_nprobe(index, cfg.nprobe)
    if isinstance(faiss.downcast_index(index), faiss.IndexRefine):
        faiss.downcast_index(index).k_factor = cfg.refine_k_factor
    return BuiltIndex(index, factory, trained - start, time.perf_counter() - trained)


def exact_search(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k, the reference for recall."""
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(_f32(x))
    return flat.search(_f32(queries), k)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k that the approximate top-k also found."""
    k = exact_ids.shape[1]
    hits = [len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / k) if hits else float("nan")


def measure_recall(built: BuiltIndex, x: np.ndarray, queries: np.ndarray, k: int, sample: int, seed: int = 0) -> dict:
    """Recall@k of ``built`` against exact search for up to ``sample`` of ``queries``; timing included."""
    if sample <= 0 or queries.shape[0] == 0:
        return {"recall_at_k": None, "k": k, "queries": 0}
    rng = np.random.default_rng(seed)
    q = queries if queries.shape[0] <= sample else queries[np.sort(rng.choice(queries.shape[0], sample, replace=False))]
    k = min(k, x.shape[0])
    start = time.perf_counter()
    _, approx = built.search(q, k)
    seconds = time.perf_counter() - start
    _, exact = exact_search(x, q, k)
    return {"recall_at_k": recall_at_k(approx, exact), "k": k, "queries": int(q.shape[0]),
            "queries_per_second": float(q.shape[0] / max(seconds, 1e-9))}

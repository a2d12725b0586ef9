"""Inner-product nearest-neighbour index over the pool, from a faiss factory string.

Small pools get exact search (``IndexFlatIP``); large ones the configured compressed index
(IVF-PQ with 4-bit fast-scan codes by default, polysemous training off since it costs minutes
on CPU and is unused for inner-product search), trained on a seeded sample of the pool and filled
shard by shard, so only the codes stay in memory. Recall@k against exact search on a bounded,
seeded sample of the pool says what the compression costs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import faiss
import numpy as np

from tasks.embed.run import PoolEmbeddings, gather, row_blocks
from tasks.retrieve.config import IndexConfig
from tasks.retrieve.kmeans import sample_rows


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
    """A filled index plus how it was made (``trained``: an empty copy of it after training)."""

    index: faiss.Index
    factory: str
    train_seconds: float
    add_seconds: float
    trained: faiss.Index | None = None

    def search(self, queries: np.ndarray, k: int, batch_size: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, pool rows) per query; rows are -1 where fewer than k were found."""
        sims = np.empty((queries.shape[0], k), np.float32)
        ids = np.empty((queries.shape[0], k), np.int64)
        for start in range(0, queries.shape[0], batch_size):
            stop = min(start + batch_size, queries.shape[0])
            sims[start:stop], ids[start:stop] = self.index.search(_f32(queries[start:stop]), k)
        return sims, ids


def _configure(index: faiss.Index, cfg: IndexConfig) -> None:
    set_nprobe(index, cfg.nprobe)
    if isinstance(faiss.downcast_index(index), faiss.IndexRefine):
        faiss.downcast_index(index).k_factor = cfg.refine_k_factor


def build_index(x: np.ndarray | PoolEmbeddings, cfg: IndexConfig, add_batch: int = 262_144) -> BuiltIndex:
    """Train (on a seeded sample of at most ``cfg.train_size`` vectors) and fill, block by block, the index
    for pool vectors ``x`` (an array, or a sharded pool read per shard)."""
    n, d = x.shape
    factory = factory_string(cfg, n, d)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    _disable_polysemous(index)
    start = time.perf_counter()
    if not index.is_trained:
        idx = sample_rows(n, cfg.train_size, np.random.default_rng(cfg.seed))
        index.train(gather(x, np.arange(n) if idx is None else idx))
    trained = faiss.clone_index(index)
    _configure(trained, cfg)
    trained_at = time.perf_counter()
    for _, block in row_blocks(x, add_batch):
        index.add(block)
    _configure(index, cfg)
    return BuiltIndex(index, factory, trained_at - start, time.perf_counter() - trained_at, trained)


def exact_search(x: np.ndarray | PoolEmbeddings, queries: np.ndarray, k: int,
                 batch_size: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k, the reference for recall, block by block with a running top-k."""
    q = _f32(queries)
    best_s = np.full((q.shape[0], k), -np.inf, np.float32)
    best_i = np.full((q.shape[0], k), -1, np.int64)
    for start, block in row_blocks(x, batch_size):
        flat = faiss.IndexFlatIP(block.shape[1])
        flat.add(block)
        s, i = flat.search(q, min(k, block.shape[0]))
        both_s = np.concatenate([best_s, s], axis=1)
        both_i = np.concatenate([best_i, np.where(i >= 0, i + start, -1)], axis=1)
        order = np.argsort(-both_s, axis=1, kind="stable")[:, :k]  # ties keep the earlier row
        best_s, best_i = np.take_along_axis(both_s, order, axis=1), np.take_along_axis(both_i, order, axis=1)
    return best_s, best_i


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k that the approximate top-k also found."""
    k = exact_ids.shape[1]
    hits = [len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / k) if hits else float("nan")


def measure_recall(built: BuiltIndex, x: np.ndarray | PoolEmbeddings, queries: np.ndarray, k: int, sample: int,
                   seed: int = 0, pool_sample: int | None = None) -> dict:
    """Recall@k of ``built`` against exact search for up to ``sample`` of ``queries``; timing included.

    With ``pool_sample`` smaller than the pool, both sides search a seeded sample of that many pool
    vectors instead (the trained index is filled with the sample alone), so the check never holds the
    pool; ``recall_pool`` in the result says how many vectors it searched.
    """
    if sample <= 0 or queries.shape[0] == 0:
        return {"recall_at_k": None, "k": k, "queries": 0}
    rng = np.random.default_rng(seed)
    q = queries if queries.shape[0] <= sample else queries[np.sort(rng.choice(queries.shape[0], sample, replace=False))]
    n = x.shape[0]
    rows = None if pool_sample is None else sample_rows(n, pool_sample, np.random.default_rng([seed, 1]))
    index, ref = built, x
    if rows is not None:
        if built.trained is None:
            raise ValueError(f"recall on a pool sample needs the empty trained index; {built.factory} has none")
        ref = gather(x, rows)
        sub = faiss.clone_index(built.trained)
        sub.add(ref)
        index = BuiltIndex(sub, built.factory, 0.0, 0.0)
    k = min(k, n if rows is None else len(rows))
    start = time.perf_counter()
    _, approx = index.search(q, k)
    seconds = time.perf_counter() - start
    _, exact = exact_search(ref, q, k)
    out = {"recall_at_k": recall_at_k(approx, exact), "k": k, "queries": int(q.shape[0]),
           "queries_per_second": float(q.shape[0] / max(seconds, 1e-9))}
    if rows is not None:
        out["recall_pool"] = int(len(rows))
    return out

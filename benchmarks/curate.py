"""Curation benchmarks on this machine: embedding throughput, k-means, retrieval index.

1. Embedding images/s through the embed stage's loader (JPEG decode + resize/crop + forward):
   the pixel descriptor, a random-init ViT-pico and a random-init ViT-S/14 at 224 px (same
   compute as the released ViT-S/14; weights do not change speed).
2. Spherical k-means (faiss) train and assign times against n and k.
3. Index build (train + add) and search throughput with recall@k against exact search, on real
   vectors (the pixel descriptor of Fashion-MNIST: train split as the pool, test split as queries).

Usage: python benchmarks/curate.py [--quick] [--threads N]
Prints markdown tables for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tasks.embed.backbone import load_embedder  # noqa: E402
from tasks.embed.loader import embed_items  # noqa: E402
from tasks.retrieve.config import IndexConfig  # noqa: E402
from tasks.retrieve.index import build_index, measure_recall  # noqa: E402
from tasks.retrieve.kmeans import assign, normalise_rows, spherical_kmeans  # noqa: E402
from tests.support.curation_pool import jpeg, photo_crops  # noqa: E402


def _items(blobs):
    return [(f"k{i}", b) for i, b in enumerate(blobs)]


def bench_embedding(n_images: int, workers: int) -> list[str]:
    blobs = [jpeg(a) for a in photo_crops(n_images, seed=0)]
    rows = ["| backbone | input | images | workers | images/s |", "|---|---|---:|---:|---:|"]
    for spec, size, batch in (("pixels:32", None, 256), ("random:vit_pico", 224, 64), ("random:vit_small", 224, 32)):
        emb = load_embedder(spec, "cpu", image_size=size)
        count = n_images if spec != "random:vit_small" else max(32, n_images // 8)
        factory = functools.partial(_items, blobs[:count])
        embed_items(emb, functools.partial(_items, blobs[:batch]), batch, 0)  # warm-up
        start = time.perf_counter()
        keys, _, _ = embed_items(emb, factory, batch, workers)
        dt = time.perf_counter() - start
        rows.append(f"| {spec} | {emb.image_size} px | {len(keys)} | {workers} | {len(keys) / dt:,.1f} |")
    return rows


def data(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (a mixture of 200 Gaussians), closer to real embeddings than pure noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, d)).astype(np.float32)
    x = centres[rng.integers(0, 200, n)] + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
    return normalise_rows(x)


def bench_kmeans(cases) -> list[str]:
    rows = ["| n | d | k | iters | train s | assign s | assign vec/s |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, d, k in cases:
        x = data(n, d)
        start = time.perf_counter()
        c = spherical_kmeans(x, k, n_iter=20, seed=0)
        train = time.perf_counter() - start
        start = time.perf_counter()
        assign(x, c)
        dt = time.perf_counter() - start
        rows.append(f"| {n:,} | {d} | {k:,} | 20 | {train:.1f} | {dt:.2f} | {n / dt:,.0f} |")
    return rows


def fmnist_vectors() -> tuple[np.ndarray, np.ndarray]:
    """Real vectors: the pixel descriptor of Fashion-MNIST (784-d), train split as pool, test as queries."""
    from tasks.datasets import fashion_mnist

    def vec(split):
        imgs = fashion_mnist.load(split).images.reshape(-1, 784).astype(np.float32)
        return normalise_rows(imgs - imgs.mean(axis=1, keepdims=True))

    return vec("train"), vec("test")


def bench_index(n: int, n_queries: int) -> list[str]:
    pool, queries = fmnist_vectors()
    x, q = pool[:n], queries[:n_queries]
    d = x.shape[1]
    rows = ["| index | n | d | train s | add s | queries/s | recall@4 | recall@32 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for factory, pq_m in (("Flat", None), ("IVF{nlist},PQ{m}x4fs", 196), ("IVF{nlist},PQ{m}x4fs,RFlat", 196),
                          ("IVF{nlist},SQ8", None)):
        cfg = IndexConfig(factory=factory, exact_below=n + 1 if factory == "Flat" else 0, nprobe=16, pq_m=pq_m,
                          train_size=min(n, 100_000))
        built = build_index(x, cfg)
        r4 = measure_recall(built, x, q, 4, n_queries)
        r32 = measure_recall(built, x, q, 32, n_queries)
        probe = "" if factory == "Flat" else " (nprobe 16)"
        rows.append(f"| {built.factory}{probe} | {n:,} | {d} | {built.train_seconds:.1f} | {built.add_seconds:.1f} | "
                    f"{r4['queries_per_second']:,.0f} | {r4['recall_at_k']:.3f} | {r32['recall_at_k']:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (CI smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="faiss/torch threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"# curate benchmarks: {os.cpu_count()} cores, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average {load:.1f}\n")
    q = args.quick
    print("\n".join(bench_embedding(128 if q else 512, 0)) + "\n")
    print("\n".join(bench_kmeans([(20_000, 384, 100), (20_000, 384, 1_000)] if q else
                                 [(20_000, 384, 100), (100_000, 384, 100), (100_000, 384, 1_000), (200_000, 768, 1_000)])) + "\n")
    print("\n".join(bench_index(20_000 if q else 60_000, 200 if q else 1_000)))


if __name__ == "__main__":
    main()

"""Dedup benchmarks on this machine (prints markdown tables for benchmarks/RESULTS.md).

1. Per-image cost (one core): decode (JPEG draft) + PCA hash / pHash / builtin descriptor on
   crawl-like 512-px JPEGs.
2. Hamming search (multi-index hashing) over 1M 64-bit (radius 4) and 128-bit (radius 8) codes
   with planted near copies.
3. Copy-detection k-NN graph + connected components over 1M descriptors (IVF, SQ8).
4. Side by side on the same 10k images (10% planted re-encoded copies): imagehash.phash + all-pairs Hamming comparison (what one
   would write without this module) against this module's decode + pHash + multi-index search.
5. Precision/recall per edit type on the planted-duplicate pool.

Usage: python benchmarks/dedup.py [--quick] [--only knn,hamming,...]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import faiss  # noqa: E402
import imagehash  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tasks.dedup.config import DedupConfig  # noqa: E402
from tasks.dedup.decode import decode_rgb, trim_uniform_border  # noqa: E402
from tasks.dedup.descriptor import DctColourEmbedder  # noqa: E402
from tasks.dedup.hamming import hamming_neighbour_pairs  # noqa: E402
from tasks.dedup.knn import build_index, threshold_edges  # noqa: E402
from tasks.dedup.pca_hash import fit_pca_hash  # noqa: E402
from tasks.dedup.phash import gray_thumbnails, phash_bits  # noqa: E402
from tasks.dedup.planted import planted_pool, source_photos, write_crawl_stage  # noqa: E402
from tasks.dedup.quality import evaluate_methods, metrics_markdown  # noqa: E402
from tasks.dedup.unionfind import UnionFind  # noqa: E402


def jpeg(img, q=90):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=q)
    return buf.getvalue()


def crop_variants(n, seed=0, side=512, copy_every=0):
    """n crawl-like JPEGs: random crops of the sample photos, longest side <= 512.

    With ``copy_every`` = c, every c-th image is instead a re-encoded, 0.8x-resized copy of the
    image 5 places before it (a planted near duplicate).
    """
    rng = np.random.default_rng(seed)
    photos = [img for _, img in source_photos()]
    out = []
    for i in range(n):
        if copy_every and i % copy_every == copy_every - 1 and i >= 5:
            src = Image.open(io.BytesIO(out[i - 5]))
            out.append(jpeg(src.resize((int(src.width * 0.8), int(src.height * 0.8))), 60))
            continue
        img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.3, 0.9)), int(h * rng.uniform(0.3, 0.9))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        c = img.crop((x, y, x + cw, y + ch))
        c.thumbnail((side, side))
        out.append(jpeg(c, 85))
    return out


def bench_per_image(jpgs):
    t = time.perf_counter()
    imgs = [decode_rgb(j, 64)[0] for j in jpgs]
    t_decode = time.perf_counter() - t
    t = time.perf_counter()
    full = [decode_rgb(j)[0] for j in jpgs]
    t_full = time.perf_counter() - t
    t = time.perf_counter()
    trimmed = [trim_uniform_border(i) for i in imgs]
    thumbs = gray_thumbnails(trimmed)
    t_thumb = time.perf_counter() - t
    model = fit_pca_hash(thumbs, 64)
    t = time.perf_counter()
    model.encode(thumbs)
    t_pca = time.perf_counter() - t
    t = time.perf_counter()
    np.packbits(phash_bits(thumbs), axis=1)
    t_ph = time.perf_counter() - t
    emb = DctColourEmbedder()
    t = time.perf_counter()
    emb(trimmed)
    t_desc = time.perf_counter() - t
    n = len(jpgs)
    rows = [
        ("JPEG decode, full size", t_full), ("JPEG decode with draft (>= 64 px)", t_decode),
        ("border trim + 32x32 LANCZOS thumbnails", t_thumb), ("PCA hash (64 bit) from thumbnails", t_pca),
        ("pHash from thumbnails", t_ph), ("builtin:dct descriptor (includes its own thumbnails)", t_desc),
        ("total per image: draft decode + trim + thumbs + PCA hash + descriptor", t_decode + t_thumb + t_pca + t_desc),
    ]
    print(f"\n#### Per-image cost, one core, {n} crawl-like JPEGs (longest side 512)\n")
    print("| step | ms/image | images/s |\n|---|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {1000 * sec / n:.3f} | {n / sec:,.0f} |")


def bench_hamming(n, radius=8, bits_per_code=64):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (n - n // 10, bits_per_code // 8), dtype=np.uint8)
    src = rng.integers(0, len(base), n // 10)
    bits = np.unpackbits(base[src], axis=1)
    flips = rng.integers(0, bits_per_code, (len(src), 3))
    for c in range(3):
        bits[np.arange(len(src)), flips[:, c]] ^= 1
    codes = np.concatenate([base, np.packbits(bits, axis=1)])
    t = time.perf_counter()
    uf = UnionFind(n)
    pairs = 0
    for a, b, _ in hamming_neighbour_pairs(codes, radius):
        uf.union(a, b)
        pairs += len(a)
    sec = time.perf_counter() - t
    labels = uf.labels()
    recovered = np.mean(labels[len(base) + np.arange(len(src))] == labels[src])
    print(f"\n#### Hamming search, {n:,} {bits_per_code}-bit codes ({len(base):,} random, {len(src):,} planted copies "
          f"with <= 3 flipped bits), radius {radius}\n")
    print(f"multi-index hash search + union-find: {sec:.1f} s ({n / sec:,.0f} codes/s), {pairs:,} edges "
          "(a pair may come from several substrings), "
          f"planted copies recovered: {recovered:.4f}")


def bench_knn(n, dim=64, k=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    dup_src = rng.integers(n // 20, n, n // 20)  # sources outside the rows that become copies
    # Noise of norm ~0.16 against unit vectors: planted copies sit near cosine 0.99.
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[: n // 20] = x[dup_src] + 0.02 * rng.normal(size=(n // 20, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cfg = DedupConfig(flat_max=50_000, ivf_codec="sq8", ivf_nprobe=8, knn_k=k)
    t = time.perf_counter()
    index = build_index(dim, n, cfg, train=x[:: max(1, n // 200_000)])
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    index.add(x)
    t_add = time.perf_counter() - t
    t = time.perf_counter()
    uf = UnionFind(n)
    edges = 0
    for i, j, _ in threshold_edges(index, x, 0, k, 0.9, batch=20_000):
        uf.union(i, j)
        edges += len(i)
    t_search = time.perf_counter() - t
    labels = uf.labels()
    recovered = np.mean(labels[: n // 20] == labels[dup_src])
    print(f"\n#### Copy-detection graph, {n:,} x {dim}-d descriptors, k={k}, IVF{int(4 * n ** 0.5)},SQ8 nprobe 8, cosine > 0.9\n")
    print(f"train {t_train:.1f} s, add {t_add:.1f} s, search + union-find {t_search:.1f} s "
          f"({n / t_search:,.0f} queries/s), {edges:,} edges; planted copies recovered {recovered:.4f}")


def bench_side_by_side(n, radius=8, baseline_pairs_n=2000):
    jpgs = crop_variants(n, seed=1, copy_every=10)
    # What one would write: imagehash.phash on each full-size decode, then compare all pairs.
    t = time.perf_counter()
    hashes = [imagehash.phash(Image.open(io.BytesIO(j))) for j in jpgs]
    t_hash = time.perf_counter() - t
    m = baseline_pairs_n
    t = time.perf_counter()
    found_base = set()
    for i in range(m):
        hi = hashes[i]
        for j in range(i + 1, m):
            if hi - hashes[j] <= radius:
                found_base.add((i, j))
    t_pairs_m = time.perf_counter() - t
    t_pairs = t_pairs_m * (n * (n - 1) / 2) / (m * (m - 1) / 2)
    # This module: draft decode, vectorised pHash, multi-index search.
    t = time.perf_counter()
    imgs = [decode_rgb(j, 64)[0] for j in jpgs]
    codes = np.packbits(phash_bits(gray_thumbnails(imgs)), axis=1)
    t_ours_hash = time.perf_counter() - t
    t = time.perf_counter()
    found = set()
    for a, b, _ in hamming_neighbour_pairs(codes, radius):
        found |= set(zip(a.tolist(), b.tolist()))
    t_ours_search = time.perf_counter() - t
    ours_m = {(i, j) for i, j in found if j < m}
    agree = len(ours_m & found_base) / max(1, len(found_base))
    base_total = t_hash + t_pairs
    ours_total = t_ours_hash + t_ours_search
    print(f"\n#### Side by side on the same {n:,} images (pHash, radius {radius})\n")
    print("| | hashing | pair search | total |\n|---|---:|---:|---:|")
    print(f"| imagehash.phash + all pairs (pairs timed on the first {m:,} images, scaled by pair count) | "
          f"{t_hash:.1f} s | {t_pairs:.1f} s | {base_total:.1f} s |")
    print(f"| this module (draft decode, batched pHash, multi-index search) | {t_ours_hash:.1f} s | "
          f"{t_ours_search:.2f} s | {ours_total:.1f} s |")
    print(f"| ratio | {t_hash / t_ours_hash:.1f}x | {t_pairs / t_ours_search:,.0f}x | {base_total / ours_total:.1f}x |")
    print(f"\nPairs within radius among the first {m:,} images: imagehash {len(found_base)}, this module "
          f"{len(ours_m)}, agreement {agree:.3f} (draft decoding changes a few pHash bits).")


def bench_quality():
    items = planted_pool(seed=0)
    kept: dict = {}
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        write_crawl_stage(os.path.join(d, "crawl"), items, shard_size=150)
        res = evaluate_methods(os.path.join(d, "crawl"), d, items, kept=kept)
    sec = time.perf_counter() - t
    n_src = len({it.source for it in items})
    print(f"\n#### Precision / recall per edit type: {len(items)} images, {n_src} real photos, "
          f"{sum(it.edit != 'original' for it in items)} planted copies ({sec:.0f} s for {len(res)} stage runs)\n")
    print(metrics_markdown(res))
    print("\n#### Originals kept: planted groups whose original (or its byte-identical copy) survives, "
          "among groups where the original was grouped with a copy\n")
    print("| method | groups | original kept | share | what was kept instead |\n|---|---:|---:|---:|---|")
    for name, k in kept.items():
        instead = ", ".join(f"{e} {c}" for e, c in sorted(k["survivors"].items(), key=lambda x: -x[1])) or "-"
        print(f"| {name} | {k['groups']} | {k['kept']} | {k['share']:.2f} | {instead} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument("--only", default="", help="comma-separated subset: per-image,hamming,knn,side-by-side,quality")
    args = p.parse_args()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    print(f"faiss {faiss.__version__}, {os.cpu_count()} cores, faiss GPUs: {faiss.get_num_gpus()}, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    jpgs = crop_variants(300 if args.quick else 2000) if not args.only or "per-image" in args.only else []
    big = 100_000 if args.quick else 1_000_000
    parts = set(args.only.split(",")) if args.only else {"per-image", "hamming", "knn", "side-by-side", "quality"}
    if "per-image" in parts:
        bench_per_image(jpgs)
    if "hamming" in parts:
        bench_hamming(big, radius=4, bits_per_code=64)
        bench_hamming(big, radius=8, bits_per_code=128)
    if "knn" in parts:
        bench_knn(big)
    if "side-by-side" in parts:
        bench_side_by_side(1000 if args.quick else 10_000, baseline_pairs_n=500 if args.quick else 2000)
    if "quality" in parts:
        bench_quality()
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""How balanced is the query-free selection on long-tailed data?

Synthetic pool: ``--concepts`` concepts with Zipf sizes (the i-th holds ``largest / i`` images,
at least ``--smallest``) around random unit directions, each concept a few sub-modes so that
clusters do not map one to one onto concepts. Every variant of ``retrieve.strategy =
hierarchical_balanced`` selects ``--target`` images; uniform random sampling is the floor. For
each: concepts covered, the max/median concept share of the selection (1.0 is perfectly
balanced), the normalised entropy of the concept distribution (1.0 is uniform), the share held by
the largest 10% of concepts, and CPU-seconds.

    python -m benchmarks.balanced [--concepts 200] [--largest 20000] [--target 20000]
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from tasks.retrieve.balanced import balanced_sample, hierarchical_kmeans
from tasks.retrieve.config import BalancedConfig
from tasks.retrieve.kmeans import normalise_rows

VARIANTS = {
    "official defaults (L2, k-means++, 10 resampling steps, closest)": {},
    "official, no resampling": dict(resampling_steps=0),
    "earlier lvd defaults (cosine, random seeds, no resampling, random picks)": dict(
        init="random", distance="cosine", refit="previous", pick="random", resampling_steps=0, n_iter=20),
    "earlier lvd + resampling from previous centroids": dict(
        init="random", distance="cosine", refit="previous", pick="random", resampling_steps=[0, 10], resample_size=4,
        n_iter=20),
}


def long_tailed_pool(concepts: int, largest: int, smallest: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = np.maximum(largest // np.arange(1, concepts + 1), smallest)
    centres = normalise_rows(rng.standard_normal((concepts, dim)))
    modes = normalise_rows(centres[:, None, :] + 0.35 * rng.standard_normal((concepts, 4, dim)) / np.sqrt(dim) * 3)
    concept = np.repeat(np.arange(concepts), sizes)
    mode = rng.integers(4, size=len(concept))
    x = modes[concept, mode] + 0.3 * rng.standard_normal((len(concept), dim)) / np.sqrt(dim)
    return normalise_rows(x), concept


def balance(rows: np.ndarray, concept: np.ndarray, concepts: int) -> dict:
    counts = np.bincount(concept[rows], minlength=concepts)
    present = counts[counts > 0]
    p = present / present.sum()
    top = np.sort(counts)[::-1][: max(1, concepts // 10)].sum() / counts.sum()
    return {"covered": int((counts > 0).sum()), "max/median": float(present.max() / np.median(present)),
            "entropy": float(-(p * np.log(p)).sum() / np.log(concepts)), "top10%": float(top)}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", type=int, default=200)
    ap.add_argument("--largest", type=int, default=20_000)
    ap.add_argument("--smallest", type=int, default=20)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--levels", type=int, nargs="+", default=[1000, 100])
    ap.add_argument("--target", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    x, concept = long_tailed_pool(args.concepts, args.largest, args.smallest, args.dim, args.seed)
    print(f"pool: {len(x)} images, {args.concepts} concepts (largest {np.bincount(concept).max()}, "
          f"smallest {np.bincount(concept).min()}), {args.dim}-d; levels {args.levels}; target {args.target}")
    rows = {"pool itself": balance(np.arange(len(x)), concept, args.concepts) | {"cpu_s": 0.0}}
    rng = np.random.default_rng(args.seed)
    rows["uniform random sample"] = balance(rng.choice(len(x), args.target, replace=False), concept,
                                            args.concepts) | {"cpu_s": 0.0}
    for name, override in VARIANTS.items():
        cfg = BalancedConfig(levels=args.levels, target_size=args.target, seed=args.seed, **override)
        start = cpu()
        picked = balanced_sample(hierarchical_kmeans(x, cfg, use_gpu=False), cfg)
        rows[name] = balance(picked, concept, args.concepts) | {"cpu_s": cpu() - start}
    print("\n| selection | concepts covered | max/median share | entropy / ln C | largest 10% hold | CPU-s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['covered']} | {r['max/median']:.1f} | {r['entropy']:.3f} | {r['top10%']:.1%} | "
              f"{r['cpu_s']:.1f} |")


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"\nwall {time.perf_counter() - t:.0f} s")

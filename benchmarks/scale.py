"""Does curation from the embed stage onward cost the same per image as the pool grows?

For every pool size N: synthetic clustered descriptors (``--dim``, default 64) are written as a real,
committed embed stage (``tasks.embed.run.write_pool_shard`` per shard of ``--shard-rows``, plus two
query sets), then the retrieval stage runs on it (k-means trained on a sample and assigned shard by
shard, an IVF-PQ index trained on a sample and filled shard by shard, the sample rule searched on it,
the cluster rule, recall checked on a pool sample, assignments and selection written). Each stage
runs in its own process; the table gives its wall time, CPU-seconds (all threads) and peak RSS, then
the fitted exponent b of CPU time ~ N^b per stage.

``--old-code DIR`` also runs the retrieval stage at the smallest size with the code checked out at
DIR (e.g. a worktree of a commit before the pool stayed sharded, which concatenated the pool in
memory), reports its peak RSS, and checks that both runs made the same decisions: identical
centroids, assignments and selection rows.

    python -m benchmarks.scale [--sizes 1000000 2000000 4000000] [--dim 64] [--root DIR] [--old-code DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

QUERY_SETS = {"near": 2000, "topics": 5000}


def retrieve_config():
    from tasks.queries.config import QuerySetConfig
    from tasks.retrieve.config import IndexConfig, KMeansConfig, RetrieveConfig

    return RetrieveConfig(
        queries=[QuerySetConfig(name="near", uri="synthetic", rule="sample", n_neighbours=4),
                 QuerySetConfig(name="topics", uri="synthetic", rule="cluster", per_cluster=100)],
        kmeans=KMeansConfig(n_clusters=1024, n_iter=10, train_sample=200_000, use_gpu=False),
        index=IndexConfig(nlist=1024, nprobe=16, train_size=100_000, recall_sample=500),
    )


def _usage() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_s": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
            "peak_rss_mb": max(own.ru_maxrss, kids.ru_maxrss) / 1024}


def stage_main(stage: str, root: str, n: int, dim: int, shard_rows: int) -> None:
    """One stage in this process; prints its measurements as one JSON line."""
    start = time.perf_counter()
    embed = os.path.join(root, "embed")
    if stage == "embed":
        from tests.support.synthetic_pool import SyntheticPool, write_synthetic_embed_stage

        pool = SyntheticPool(n=n, dim=dim, shard_rows=shard_rows, centres=2000, spread=0.6, seed=17)
        write_synthetic_embed_stage(embed, pool, QUERY_SETS)
        extra = {"shards": len(pool.shard_sizes())}
    else:
        from tasks.retrieve.run import run_retrieve

        commit = run_retrieve(embed, os.path.join(root, stage), retrieve_config())
        index = commit.get("extra", {}).get("index", {})
        extra = {"selected": commit["counts"].get("selected_pool"), "recall_at_k": index.get("recall_at_k"),
                 "factory": index.get("factory")}
    print(json.dumps({"stage": stage, "n": n, "wall_s": time.perf_counter() - start, **_usage(), **extra}))


def run_stage(stage: str, root: str, n: int, dim: int, shard_rows: int, code: str) -> dict:
    # This script runs as a file, so the stage code (and the embed writer) comes from ``code`` alone.
    env = dict(os.environ, PYTHONPATH=code)
    cmd = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--root", root, "--sizes", str(n),
           "--dim", str(dim), "--shard-rows", str(shard_rows)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_decisions(a: str, b: str) -> dict:
    """Compare two retrieve stage outputs: centroids, every image's cluster (and its similarity, which
    differs in the last bits where the nearest-centroid search ran in other batch sizes), the selection."""
    from storage.tables import read_table

    ca, cb = np.load(os.path.join(a, "centroids.npy")), np.load(os.path.join(b, "centroids.npy"))
    ta, tb = (read_table(os.path.join(d, "assignments.parquet")) for d in (a, b))
    sa, sb = (read_table(os.path.join(d, "selection.parquet")) for d in (a, b))
    return {"centroids_equal": bool(np.array_equal(ca, cb)),
            "clusters_equal": ta.select(["key", "shard", "cluster"]).equals(tb.select(["key", "shard", "cluster"])),
            "assignment_similarity_max_diff": float(np.abs(ta.column("similarity").to_numpy()
                                                           - tb.column("similarity").to_numpy()).max()),
            "selection_rows": sa.num_rows, "selection_equal": bool(sa.equals(sb))}


def exponent(ns: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(N)."""
    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000, 4_000_000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--shard-rows", type=int, default=100_000)
    p.add_argument("--root", default=None, help="where the stages are written (default: a temporary folder)")
    p.add_argument("--old-code", default=None, help="a checkout whose retrieval stage runs at the smallest size too")
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        stage_main(args.stage, args.root, args.sizes[0], args.dim, args.shard_rows)
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        rows = []
        for n in args.sizes:
            root = os.path.join(tmp, f"n{n}")
            for stage in ("embed", "retrieve"):
                rows.append(run_stage(stage, root, n, args.dim, args.shard_rows, here))
                print(json.dumps(rows[-1]), flush=True)
            if args.old_code and n == min(args.sizes):
                old = run_stage("retrieve-old", root, n, args.dim, args.shard_rows, os.path.abspath(args.old_code))
                old.update(same_decisions(os.path.join(root, "retrieve"), os.path.join(root, "retrieve-old")))
                rows.append(old)
                print(json.dumps(old), flush=True)
            for stage in ("embed", "retrieve", "retrieve-old"):
                if os.path.isdir(os.path.join(root, stage)):
                    subprocess.run(["rm", "-rf", os.path.join(root, stage)], check=True)
    print(f"\ndim {args.dim}, {args.shard_rows:,} rows per embed shard, one process per stage\n")
    print("| stage | N | wall s | CPU s | CPU us/image | peak RSS MB | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        notes = ", ".join(f"{k} {r[k]}" for k in ("shards", "selected", "recall_at_k", "factory",
                                                  "centroids_equal", "clusters_equal",
                                                  "assignment_similarity_max_diff", "selection_equal")
                          if r.get(k) is not None)
        print(f"| {r['stage']} | {r['n']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {1e6 * r['cpu_s'] / r['n']:.2f} "
              f"| {r['peak_rss_mb']:.0f} | {notes} |")
    if len(args.sizes) > 1:
        print("\n| stage | CPU-time exponent b (CPU ~ N^b) | peak RSS growth, largest / smallest N |")
        print("|---|---:|---:|")
        for stage in ("embed", "retrieve"):
            rs = [r for r in rows if r["stage"] == stage]
            print(f"| {stage} | {exponent([r['n'] for r in rs], [r['cpu_s'] for r in rs]):.2f} "
                  f"| {rs[-1]['peak_rss_mb'] / rs[0]['peak_rss_mb']:.2f} |")
        total = [sum(r["cpu_s"] for r in rows if r["n"] == n and r["stage"] != "retrieve-old") for n in args.sizes]
        print(f"| embed + retrieve | {exponent(args.sizes, total):.2f} | |")


if __name__ == "__main__":
    main()

"""Shard write/read throughput of storage/ on file:// and on a local S3-compatible server.

    python -m benchmarks.storage_io [--shards 4] [--shard-mb 64] [--sample-kb 100]

Writes WebDataset shards with ShardWriter (hashing included), then reads them back with
iter_samples (with sha256 verification) and with plain webdataset.WebDataset. The S3 rows use
a SeaweedFS server started on 127.0.0.1 for the run, so they measure the client path
(signing, multipart, the local spool), not a network.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from storage.shards import ShardWriter, iter_samples
from storage.uri import clear_fs_cache, join
from tests.support.s3_server import SeaweedS3


def write_shards(root: str, shards: int, per_shard: int, sample: bytes) -> list:
    infos = []
    for s in range(shards):
        with ShardWriter(join(root, f"bench-{s:06d}.tar")) as w:
            for i in range(per_shard):
                w.write(f"{s:04d}{i:07d}", {"jpg": sample, "json": {"shard": s, "i": i}})
        infos.append(w.close())
    return infos


def run(root: str, args, sample: bytes) -> dict:
    per_shard = max(1, args.shard_mb * 1024 // args.sample_kb)
    t0 = time.perf_counter()
    infos = write_shards(root, args.shards, per_shard, sample)
    t_write = time.perf_counter() - t0
    total = sum(i.nbytes for i in infos)
    t0 = time.perf_counter()
    n = sum(1 for info in infos for _ in iter_samples(info.url, expected_sha256=info.sha256))
    t_read = time.perf_counter() - t0
    import webdataset as wds

    t0 = time.perf_counter()
    m = sum(1 for _ in wds.WebDataset([i.url for i in infos], shardshuffle=False))
    t_wds = time.perf_counter() - t0
    assert n == m == per_shard * args.shards
    mb = total / 2**20
    return {"MB": mb, "samples": n, "write": mb / t_write, "read": mb / t_read, "wds": mb / t_wds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard-mb", type=int, default=64)
    ap.add_argument("--sample-kb", type=int, default=100)
    ap.add_argument("--chunk-mb", type=int, default=16, help="S3 multipart part size")
    args = ap.parse_args()
    sample = np.random.default_rng(0).integers(0, 256, args.sample_kb * 1024, dtype=np.uint8).tobytes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("file://", run(f"file://{tmp}/shards", args, sample)))
    server = SeaweedS3().start()
    try:
        os.environ.update(server.env())
        os.environ["LVD_S3_MULTIPART_CHUNKSIZE"] = str(args.chunk_mb * 2**20)
        clear_fs_cache()
        rows.append((f"s3:// (SeaweedFS, {args.chunk_mb} MB parts)", run(f"s3://{server.new_bucket()}/shards", args, sample)))
    finally:
        server.stop()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.shards} shards x {args.shard_mb} MB, {args.sample_kb} KB samples")
    print(f"| backend | MB | samples | write MB/s | read+verify MB/s | webdataset MB/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['MB']:.0f} | {r['samples']} | {r['write']:.0f} | {r['read']:.0f} | {r['wds']:.0f} |")


if __name__ == "__main__":
    main()

"""Crawl throughput against the local demo web, next to the machine's pure decode+resize bound.

For 1, 2 and all cores ("cores" = decode/resize worker processes) it crawls the demo web's ordinary pages
(the hostile page is left out: its stalling host would measure timeouts, not throughput) with the demo
server in its own process, and reports the median of several runs in images/s and MB/s of original bytes.
Then it decodes and resizes the same original files without any network, in as many processes, which is
the ceiling the crawl can approach on this machine.

    python -m benchmarks.crawl --images 600 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lvd.demo_web import build_demo_web, serve_demo_web
from tasks.crawl.imaging import ImageParams, Processed, process_image
from tasks.crawl.stage import CrawlPart, crawl_part

PARAMS = ImageParams(max_pixels=89_478_485, min_side=64, max_aspect_ratio=4.0, max_side=512, jpeg_quality=90)


def _cpu_self_and_children() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _decode_chunk(paths: list[str]) -> tuple[int, int, float]:
    ok = nbytes = 0
    cpu = time.process_time()
    for p in paths:
        data = Path(p).read_bytes()
        nbytes += len(data)
        ok += isinstance(process_image(data, PARAMS), Processed)
    return ok, nbytes, time.process_time() - cpu


@dataclass
class Run:
    images: int
    nbytes: int
    seconds: float
    cpu: float


def decode_bound(files: list[str], workers: int) -> Run:
    """Decode+resize+encode of the local files in `workers` processes: no network, no shards."""
    chunks = [files[i::workers * 4] for i in range(workers * 4)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_chunk, [chunks[0][:5]] * workers))  # start and warm the workers
        start = time.perf_counter()
        results = list(pool.map(_decode_chunk, chunks))
        seconds = time.perf_counter() - start
    return Run(sum(r[0] for r in results), sum(r[1] for r in results), seconds, sum(r[2] for r in results))


def crawl_once(web, urls_file: str, workers: int, out: str) -> Run:
    """One crawl_part over all ordinary pages; CPU counts the crawler, its decode workers and the server."""
    with serve_demo_web(web.root, process=True) as server:  # fresh server: flaky hosts flake again
        cfg = server.crawl_config(decode_workers=workers, max_concurrency=64, max_per_host=16,
                                  pages_per_part=10_000, read_timeout=10.0, request_timeout=30.0)
        part = CrawlPart(index=0, kind="urls", uris=[urls_file])
        server_cpu, cpu, start = server.cpu_seconds(), _cpu_self_and_children(), time.perf_counter()
        summary = crawl_part(part, f"file://{out}/crawl-{workers}-{time.time_ns()}", cfg)
        seconds = time.perf_counter() - start
        cpu = _cpu_self_and_children() - cpu + server.cpu_seconds() - server_cpu
    return Run(summary["ok"], summary["bytes_downloaded"], seconds, cpu)


def fetch_only(web, files: list[str]) -> float:
    """images/s of the HTTP side alone: every picture fetched through the crawler's Fetcher, not decoded."""
    import asyncio

    from tasks.crawl.fetch import Fetcher

    urls = [u for u in web.good_images if "-half" not in u]
    with serve_demo_web(web.root, process=True) as server:
        cfg = server.crawl_config(max_concurrency=64, max_per_host=16, read_timeout=10.0, request_timeout=30.0)

        async def go() -> float:
            async with Fetcher(cfg) as fetcher:
                start = time.perf_counter()
                results = await asyncio.gather(*(fetcher.fetch(u) for u in urls))
                return sum(r.ok for r in results) / (time.perf_counter() - start)

        return asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--photo-fraction", type=float, default=0.3)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    levels = sorted({1, 2, cores})
    with tempfile.TemporaryDirectory(prefix="lvd-crawl-bench-") as tmp:
        web = build_demo_web(Path(tmp) / "web", n_images=args.images, photo_fraction=args.photo_fraction)
        urls_file = str(Path(tmp) / "pages.txt")
        Path(urls_file).write_text("\n".join(p for p in web.pages if "hostile" not in p) + "\n")
        files = [str(p) for p in (web.root / "sites").rglob("img/*") if p.suffix in (".jpg", ".png", ".gif", ".webp")
                 and "-half" not in p.name]
        mean_kb = statistics.mean(Path(f).stat().st_size for f in files) / 1e3
        print(f"machine: {cores} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}")
        print(f"demo web: {len(web.pages) - 1} pages, {len(files)} pictures, mean {mean_kb:.1f} kB "
              f"({web.sources}); {args.repeats} runs per row, median\n")
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        fetch_ips = statistics.median(fetch_only(web, files) for _ in range(args.repeats))
        print(f"fetch only (no decode, same server and limits): {fetch_ips:.0f} images/s\n")
        print("| cores | crawl images/s | crawl MB/s | decode+resize images/s | decode+resize MB/s | crawl / bound "
              "| crawl images per CPU-s | decode images per CPU-s |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for workers in levels:
            runs, bound = [], []
            for _ in range(args.repeats):  # interleaved, so a busy moment hits both columns alike
                runs.append(crawl_once(web, urls_file, workers, tmp))
                bound.append(decode_bound(files, workers))
            med = lambda xs, f: statistics.median(f(x) for x in xs)  # noqa: E731
            ips, mbs = med(runs, lambda r: r.images / r.seconds), med(runs, lambda r: r.nbytes / r.seconds / 1e6)
            bips, bmbs = med(bound, lambda r: r.images / r.seconds), med(bound, lambda r: r.nbytes / r.seconds / 1e6)
            cpu_crawl, cpu_bound = med(runs, lambda r: r.images / r.cpu), med(bound, lambda r: r.images / r.cpu)
            print(f"| {workers} | {ips:.0f} | {mbs:.1f} | {bips:.0f} | {bmbs:.1f} | {ips / bips:.0%} "
                  f"| {cpu_crawl:.0f} | {cpu_bound:.0f} |", flush=True)
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()

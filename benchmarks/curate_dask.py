"""curate-lvd throughput on a local Dask cluster of 1 and of 2 worker processes (the scaling ratio).

Each run curates the demo web (cpu-tiny preset, URL-list input, small crawl parts so every stage
has several parts) into a fresh dataset root, from a freshly served demo web, against one Prefect
server on 127.0.0.1. Prints wall seconds per run (cluster start included), crawled pool images per
second and the 2-worker / 1-worker speed-up.

Usage: python -m benchmarks.curate_dask [--images 120] [--pages-per-part 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def curate_once(web_dir: Path, root: str, workers: int, pages_per_part: int) -> tuple[float, dict]:
    from flows.config import PipelineConfig
    from flows.curate_lvd import curate_lvd
    from lvd.config import validate
    from lvd.demo import demo_config
    from lvd.demo_web import DemoWeb, serve_demo_web

    web = DemoWeb.load(web_dir)
    with serve_demo_web(web_dir) as server:
        data = demo_config("cpu-tiny", [f"storage.root={root}"], server, web).model_dump(mode="json")
        data.update(inputs=[str(web.pages_txt)], runner={"kind": "dask", "n_workers": workers})
        data["crawl"]["pages_per_part"] = pages_per_part
        cfg = validate(PipelineConfig, data).curate()
        started = time.monotonic()
        result = curate_lvd(cfg)
        return time.monotonic() - started, {s: v["counts"] for s, v in result["stages"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--pages-per-part", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from lvd.demo_web import build_demo_web
    from tests.support.prefect_stack import prefect_server

    with tempfile.TemporaryDirectory(prefix="lvd-dask-bench-") as tmp:
        tmp_path = Path(tmp)
        build_demo_web(tmp_path / "web", n_images=args.images, seed=1)
        with prefect_server(tmp_path, tmp_path / "server.log") as (api_url, _env):
            # Dask workers inherit the environment: they report to this server instead of starting their own.
            os.environ.update(PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false")
            with temporary_settings({PREFECT_API_URL: api_url}):
                rows = []
                for repeat in range(args.repeats):
                    for workers in (1, 2):
                        root = f"file://{tmp_path}/data-{workers}-{repeat}"
                        seconds, counts = curate_once(tmp_path / "web", root, workers, args.pages_per_part)
                        rows.append((workers, seconds, counts))
    print(f"\ncurate-lvd on the demo web ({args.images} pictures), cpu-tiny, Dask LocalCluster, 1 thread per worker\n")
    print("| workers | crawl parts | pool images | curated | wall s | pool images/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    best: dict[int, float] = {}
    for workers, seconds, counts in rows:
        pool = counts["crawl"]["samples"]
        print(f"| {workers} | {counts['crawl']['parts']} | {pool} | {counts['shards']['samples']} | {seconds:.1f} "
              f"| {pool / seconds:.2f} |")
        best[workers] = min(best.get(workers, seconds), seconds)
    print(f"\nspeed-up 2 workers / 1 worker (best runs): {best[1] / best[2]:.2f}x")


if __name__ == "__main__":
    main()

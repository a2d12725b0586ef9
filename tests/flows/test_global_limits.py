"""Per-host concurrency and the S3 request rate hold across worker processes through Prefect global limits.

A real Prefect server, a local two-process Dask cluster running curate-lvd's crawl stage, and a web on
127.0.0.1 that counts the requests it has in flight per host: with per-host limit 2 the host sees at most
2 at once while the limits are global, and more than 2 when each worker keeps only its own.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prefect import flow

from flows.config import CurateConfig
from flows.curate_lvd import run_crawl
from flows.runner import RunnerConfig, use_task_runner
from flows.stages import use_storage
from storage.config import StorageConfig
from storage.uri import join, list_files, write_bytes_atomic
from tasks.crawl import reasons
from tasks.crawl.config import CrawlConfig
from tasks.crawl.fetch import Fetcher
from tasks.crawl.stage import plan_crawl_parts
from tasks.crawl.shared_limits import prepare_crawl_limits
from tasks.global_limits import S3_REQUESTS, GlobalSlots, limit_name, rate_limit_size, s3_request_rate
from tests.support.busy_web import serve_busy_web

pytestmark = pytest.mark.slow

HOST = "busy.example.org"
PER_HOST = 2
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def busy_web():
    # 4 pages (one crawl part each) of 12 pictures; every answer takes 0.2 s, so requests overlap
    with serve_busy_web(pages=4, images_per_page=12, delay=0.2) as web:
        yield web


def _limit(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


@flow(name="curate-lvd-crawl")
def crawl_like_curate_lvd(cfg: CurateConfig) -> dict:
    """The start of curate-lvd and its crawl stage, on the configured runner."""
    use_storage(cfg.storage)
    prepare_crawl_limits(cfg.crawl)
    with use_task_runner(cfg.runner):
        _uri, commit = run_crawl(cfg, plan_crawl_parts(cfg.inputs, cfg.crawl))
    return commit


def _curate_config(tmp_path, web, mode: str) -> CurateConfig:
    pages = tmp_path / "pages.txt"
    pages.write_text("\n".join(web.page_urls(HOST)) + "\n")
    crawl = CrawlConfig(
        resolve=web.resolve(HOST), allow_private_networks=["127.0.0.1/32"], pages_per_part=1,
        max_per_host=PER_HOST, max_concurrency=16, decode_workers=1, retries=0,
        global_limits={"mode": mode, "acquire_timeout": 60},
    )
    return CurateConfig(
        storage=StorageConfig(root=f"file://{tmp_path}/data"), dataset=f"limits-{mode}", inputs=[str(pages)],
        crawl=crawl, runner=RunnerConfig(kind="dask", n_workers=2, threads_per_worker=1),
    )


@pytest.mark.parametrize("mode", ["prefect", "local"])
def test_two_dask_workers_keep_the_per_host_limit_only_when_it_is_global(prefect_api, busy_web, tmp_path, mode):
    cfg = _curate_config(tmp_path, busy_web, mode)
    busy_web.counts.reset()
    started = time.monotonic()
    commit = crawl_like_curate_lvd(cfg)
    elapsed = time.monotonic() - started
    counts = commit["counts"]
    images = busy_web.pages * busy_web.images_per_page
    assert (counts["parts"], counts["images"], counts["ok"]) == (4, images, images), counts
    peak = busy_web.counts.peak[HOST]
    seen = busy_web.counts.requests[HOST]
    log.info("global_limits.mode=%s: %s saw at most %d of %d requests at once; crawl flow %.1f s",
             mode, HOST, peak, seen, elapsed)
    assert seen >= images + busy_web.pages
    if mode == "prefect":
        assert peak == PER_HOST, f"{HOST} saw {peak} requests at once across 2 workers ({elapsed:.0f} s)"
        limit = _limit(limit_name("host", HOST))
        assert (limit.limit, limit.active, limit.active_slots) == (PER_HOST, True, 0)  # every slot given back
    else:
        assert peak > PER_HOST, f"per-process limits alone should let 2 workers exceed {PER_HOST}, saw {peak}"


def test_a_host_slot_not_free_in_time_is_a_recorded_failure(prefect_api, busy_web):
    """Another worker holds the host's only slot: the fetch fails with its reason instead of hanging."""
    cfg = CrawlConfig(resolve=busy_web.resolve("held.example.org"), allow_private_networks=["127.0.0.1/32"],
                      max_per_host=1, respect_robots_txt=False,
                      global_limits={"mode": "prefect", "acquire_timeout": 1.0})
    url = "http://held.example.org/img/0-0.jpg"

    async def go():
        async with GlobalSlots() as other_worker, Fetcher(cfg) as fetcher:
            async with other_worker.hold(limit_name("host", "held.example.org"), 1, 30):
                blocked = await fetcher.fetch(url)
            after = await fetcher.fetch(url)
        return blocked, after

    started = time.monotonic()
    blocked, after = asyncio.run(go())
    assert time.monotonic() - started < 15
    assert (blocked.status, blocked.reason) == (reasons.STATUS_FAILED, reasons.GLOBAL_LIMIT_TIMEOUT), blocked
    assert "lvd-host-held.example.org" in blocked.detail
    assert after.ok, after


def _timed_writes(root: str, n: int) -> float:
    """Seconds for two threads (each with the caller's Prefect settings) to write n small objects each."""
    def writer(t: int) -> None:
        for i in range(n):
            write_bytes_atomic(join(root, f"t{t}", f"{i}.bin"), b"x" * 100)

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(contextvars.copy_context().run, writer, t) for t in range(2)]:
            done.result()
    return time.monotonic() - started


def test_s3_requests_keep_the_shared_rate(prefect_api, s3_root):
    rate, n = 5.0, 10
    unlimited = _timed_writes(join(s3_root, "free"), n)
    with s3_request_rate(rate, timeout=60):
        limited = _timed_writes(join(s3_root, "rated"), n)
    log.info("%d S3 PUTs from 2 threads: %.2f s unlimited, %.2f s at %g/s", 2 * n, unlimited, limited, rate)
    # one second's burst, then the rate: 20 PUTs at 5/s take at least 3 s however many threads send them
    floor = (2 * n - rate_limit_size(rate)) / rate
    assert limited >= 0.9 * floor, (limited, floor)
    assert unlimited < floor / 2, unlimited
    limit = _limit(S3_REQUESTS)
    assert (limit.limit, limit.slot_decay_per_second) == (rate_limit_size(rate), rate)
    assert [len(list_files(join(s3_root, "rated", f"t{t}"))) for t in range(2)] == [n, n]

"""Global and per-host concurrency limits, observed by the server counting requests in flight per host."""

import asyncio

from lvd.demo_web import CDN, SLOW
from tasks.crawl.fetch import Fetcher
from tasks.crawl.scheduler import run_per_host


def _fetch_all(cfg, urls):
    async def go():
        async with Fetcher(cfg) as fetcher:
            return await asyncio.gather(*(fetcher.fetch(u) for u in urls))

    return asyncio.run(go())


def test_per_host_limit_is_reached_and_never_exceeded(crawl_server, crawl_web):
    slow = [u for u in crawl_web.good_images if u.startswith(f"http://{SLOW}/img/")]
    cdn = [u for u in crawl_web.good_images if u.startswith(f"http://{CDN}/img/")][:40]
    assert len(slow) >= 3
    crawl_server.reset_stats()
    results = _fetch_all(crawl_server.crawl_config(max_per_host=2, max_concurrency=50), slow * 3 + cdn)
    assert all(r.ok for r in results)
    peak = crawl_server.stats()["peak"]
    assert peak[SLOW] == 2  # every slow request takes 50 ms, so the limit is reached, and it holds
    assert peak[CDN] <= 2


def test_global_limit_across_hosts(crawl_server, crawl_web):
    slow = [u for u in crawl_web.good_images if u.startswith(f"http://{SLOW}/img/")]
    crawl_server.reset_stats()
    results = _fetch_all(crawl_server.crawl_config(max_per_host=10, max_concurrency=3), slow * 4)
    assert all(r.ok for r in results)
    assert crawl_server.stats()["peak"][SLOW] == 3


def test_scheduler_keeps_fast_hosts_busy_while_a_slow_host_is_full():
    """With 2 workers' worth of slots on a slow host, the fast host's items finish without waiting for it."""
    order = []

    async def go():
        async def work(item, release):
            host, i = item
            await asyncio.sleep(0.2 if host == "slow" else 0.001)
            order.append(item)

        items = [("slow", i) for i in range(6)] + [("fast", i) for i in range(30)]
        await run_per_host(items, lambda it: it[0], per_host=2, workers=8, work=work)

    asyncio.run(go())
    first_slow_done = next(i for i, it in enumerate(order) if it[0] == "slow")
    assert sum(1 for it in order[:first_slow_done] if it[0] == "fast") == 30
    assert len(order) == 36

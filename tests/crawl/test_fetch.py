"""The fetcher against the demo web's real HTTP server: retries, redirects, limits, SSRF, robots, timeouts."""

import asyncio

from tasks.crawl import reasons
from lvd.demo_web import CDN, FLAKY, SHOP, SLOW
from tasks.crawl.fetch import Fetcher


def _fetch_all(cfg, urls, accept="image"):
    async def go():
        async with Fetcher(cfg) as fetcher:
            return await asyncio.gather(*(fetcher.fetch(u, accept=accept) for u in urls))

    return asyncio.run(go())


def test_5xx_then_success_is_retried(crawl_server):
    cfg = crawl_server.crawl_config(retries=3)
    url = f"http://{FLAKY}/img/flaky.jpg"  # answers 503 twice, then the picture
    (res,) = _fetch_all(cfg, [url])
    assert res.ok and res.attempts == 3 and res.http_status == 200 and res.body[:3] == b"\xff\xd8\xff"
    assert crawl_server.stats()["paths"][f"{FLAKY}/img/flaky.jpg"] == 3


def test_429_with_retry_after_is_retried(crawl_server):
    (res,) = _fetch_all(crawl_server.crawl_config(), [f"http://{FLAKY}/img/throttled.jpg"])
    assert res.ok and res.attempts == 2


def test_retries_are_bounded(crawl_server):
    cfg = crawl_server.crawl_config(retries=2)
    (res,) = _fetch_all(cfg, [f"http://{FLAKY}/img/down.jpg"])
    assert (res.status, res.reason, res.http_status, res.attempts) == ("failed", "http_500", 500, 3)
    assert crawl_server.stats()["paths"][f"{FLAKY}/img/down.jpg"] == 3


def test_404_is_not_retried(crawl_server):
    (res,) = _fetch_all(crawl_server.crawl_config(retries=3), [f"http://{CDN}/img/missing.jpg"])
    assert (res.reason, res.attempts) == ("http_404", 1)


def test_redirects(crawl_server):
    cfg = crawl_server.crawl_config(max_redirects=5)
    loop, chain, moved, ssrf = _fetch_all(cfg, [f"http://{CDN}/loop/a.jpg", f"http://{CDN}/chain/0.jpg",
                                                f"http://{CDN}/moved.jpg", f"http://{CDN}/to-metadata.jpg"])
    assert loop.reason == reasons.REDIRECT_LOOP and loop.redirects == [f"http://{CDN}/loop/b.jpg",
                                                                       f"http://{CDN}/loop/a.jpg"]
    assert chain.reason == reasons.TOO_MANY_REDIRECTS and len(chain.redirects) == 6
    assert moved.ok and moved.final_url == f"http://{CDN}/img/moved-target.jpg"
    assert (ssrf.status, ssrf.reason) == ("rejected", reasons.SSRF_BLOCKED)
    assert ssrf.final_url.startswith("http://169.254.169.254/")


def test_ssrf_guard_on_literals_names_and_without_allowlist(crawl_server):
    cfg = crawl_server.crawl_config()
    lit, name = _fetch_all(cfg, ["http://10.20.30.40/internal.jpg", "http://intranet.example.com/admin.jpg"])
    assert lit.reason == name.reason == reasons.SSRF_BLOCKED and lit.attempts == 0
    strict = crawl_server.crawl_config(allow_private_networks=[])
    (res,) = _fetch_all(strict, [f"http://{CDN}/img/logo.png"])  # the demo web itself is on loopback
    assert res.reason == reasons.SSRF_BLOCKED


def test_body_limits_and_content_checks(crawl_server):
    cfg = crawl_server.crawl_config(max_bytes=1_000_000)
    big, stream, fake, html, noai = _fetch_all(cfg, [
        f"http://{CDN}/big/huge.jpg", f"http://{CDN}/big/stream.jpg", f"http://{CDN}/img/fake.jpg",
        f"http://{CDN}/img/page.png", f"http://{CDN}/noai/protected.jpg"])
    assert big.reason == stream.reason == reasons.TOO_LARGE
    assert "Content-Length" in big.detail and "exceeds" in stream.detail  # one refused up front, one mid-stream
    assert fake.reason == reasons.NOT_AN_IMAGE and html.reason == reasons.CONTENT_TYPE
    assert noai.reason == reasons.X_ROBOTS_TAG and noai.detail == "noai"


def test_robots_fetched_once_per_host_and_obeyed(crawl_server):
    crawl_server.reset_stats()
    urls = [f"http://{SHOP}/p/page-{i:04d}.html" for i in range(4)] + [f"http://{SHOP}/private/secret.jpg"]
    *pages, private = _fetch_all(crawl_server.crawl_config(), urls, accept="html")
    assert all(p.ok for p in pages[:4])
    assert private.reason == reasons.ROBOTS_DISALLOWED
    paths = crawl_server.stats()["paths"]
    assert paths[f"{SHOP}/robots.txt"] == 1 and f"{SHOP}/private/secret.jpg" not in paths


def test_stalling_host_times_out_after_retries(crawl_server):
    cfg = crawl_server.crawl_config(read_timeout=0.3, request_timeout=1.0, retries=1)
    (res,) = _fetch_all(cfg, [f"http://{SLOW}/stall.jpg"])
    assert (res.status, res.reason, res.attempts) == ("failed", reasons.TIMEOUT, 2)

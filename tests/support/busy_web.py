"""A small web on 127.0.0.1 that answers slowly and counts, per Host header, the most requests it had in
flight at once: what a crawled site sees of the crawl's politeness, whichever processes crawl it.

Pages `/page-{i}.html` each show `images_per_page` pictures `/img/{i}-{j}.jpg` (real JPEGs); every answer
(robots.txt 404 included) comes after `delay` seconds, so requests overlap whenever a crawler allows it.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from PIL import Image


def _jpeg(index: int) -> bytes:
    img = Image.new("RGB", (96, 80), ((37 * index) % 256, (91 * index) % 256, (53 * index) % 256))
    for x in range(0, 96, 8):
        for y in range(0, 80, 8):
            img.putpixel((x, y), (255, 255, 255))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass
class InFlight:
    """Requests in flight per host, and the peak since the last reset."""

    active: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self, host: str) -> None:
        with self.lock:
            self.active[host] = self.active.get(host, 0) + 1
            self.peak[host] = max(self.peak.get(host, 0), self.active[host])
            self.requests[host] = self.requests.get(host, 0) + 1

    def leave(self, host: str) -> None:
        with self.lock:
            self.active[host] -= 1

    def reset(self) -> None:
        with self.lock:
            self.peak = dict(self.active)
            self.requests = {}


@dataclass
class BusyWeb:
    port: int
    pages: int
    images_per_page: int
    counts: InFlight

    def page_urls(self, host: str) -> list[str]:
        return [f"http://{host}/page-{i}.html" for i in range(self.pages)]

    def resolve(self, host: str) -> dict[str, str]:
        """CrawlConfig.resolve sending `host` here."""
        return {host: f"127.0.0.1:{self.port}"}


def _app(pages: int, images_per_page: int, delay: float, counts: InFlight):
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        host = request.host.split(":")[0].lower()
        counts.enter(host)
        try:
            await asyncio.sleep(delay)
            name = request.path.rsplit("/", 1)[-1]
            if request.path.startswith("/page-") and name.endswith(".html"):
                i = int(name[5:-5])
                imgs = "".join(f'<img src="/img/{i}-{j}.jpg">' for j in range(images_per_page))
                return web.Response(text=f"<html><body>{imgs}</body></html>", content_type="text/html")
            if request.path.startswith("/img/") and name.endswith(".jpg"):
                i, j = (int(p) for p in name[:-4].split("-"))
                return web.Response(body=_jpeg(i * images_per_page + j), content_type="image/jpeg")
            return web.Response(status=404, text="not here")
        finally:
            counts.leave(host)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


@contextmanager
def serve_busy_web(pages: int, images_per_page: int, delay: float) -> Iterator[BusyWeb]:
    """Serve the busy web from a thread of this process on a free port of 127.0.0.1."""
    from aiohttp import web

    counts = InFlight()
    ready, stop = threading.Event(), threading.Event()
    box: list[int] = []

    async def main() -> None:
        runner = web.AppRunner(_app(pages, images_per_page, delay, counts), access_log=None,
                               handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=512).start()
        box.append(runner.addresses[0][1])
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="busy-web", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("busy web did not start")
    try:
        yield BusyWeb(box[0], pages, images_per_page, counts)
    finally:
        stop.set()
        thread.join(timeout=10)

"""A small, hostile web for demos, tests and benchmarks, served on 127.0.0.1.

`build_demo_web` writes virtual hosts (shop/cdn/slow/flaky/ads.example.*), HTML pages, a WARC of the pages,
a URL list and a domain blocklist into a directory. Pictures are real: Fashion-MNIST (Debian
dataset-fashion-mnist, upscaled) and, where scikit-image / scikit-learn are installed (the dev extra),
crops of their sample photos.
A fixed set of bad cases (404, redirect loop and chain, oversized files, a non-image behind .jpg, a
stalling host, a decompression bomb, a truncated JPEG, tiny and extreme-aspect images, X-Robots-Tag
noai, robots.txt-disallowed paths, a blocklisted domain, SSRF targets, flaky 5xx/429) is listed in
expected.json with the status and reason the crawl must record.

`serve_demo_web` serves the directory with Host-based routing (one port, many hosts); a crawl reaches it
through `CrawlConfig.resolve` (host -> 127.0.0.1:port), so page URLs stay port-free and the WARC stays valid
across runs. `/__stats__` on any host reports requests and peak concurrency per host.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import math
import multiprocessing
import os
import random
import struct
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

SHOP = "shop.example.com"
CDN = "cdn.example.com"
SLOW = "slow.example.net"
FLAKY = "flaky.example.org"
ADS = "ads.example.org"
INTRANET = "intranet.example.com"  # resolves (via the demo's resolve map) to a private address
HOSTS = (SHOP, CDN, SLOW, FLAKY, ADS)
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png",
    "logo.png", "moon.png", "motorcycle_left.png", "phantom.png", "retina.jpg", "rocket.jpg",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
IMAGES_PER_PAGE = 12
BIG_BYTES = 3_000_000  # larger than the demo config's max_bytes


@dataclass
class DemoWeb:
    """Where build_demo_web put things, and what the crawl must record for each bad URL."""

    root: Path
    pages: list[str]
    good_images: list[str]
    expected: dict[str, tuple[str, str]]  # url -> (status, reason) for the bad cases and the retried ones
    pages_txt: Path
    warc: Path
    html_files: list[Path]
    blocklist: Path
    sources: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | os.PathLike) -> "DemoWeb":
        root = Path(root)
        meta = json.loads((root / "demo.json").read_text())
        return cls(
            root=root, pages=meta["pages"], good_images=meta["good_images"],
            expected={k: tuple(v) for k, v in meta["expected"].items()},
            pages_txt=root / "pages.txt", warc=root / "pages.warc.gz",
            html_files=[root / p for p in meta["html_files"]], blocklist=root / "blocklist.txt",
            sources=meta["sources"],
        )

    def write_warc(self, path: str | os.PathLike, pages: list[str]) -> Path:
        """A WARC (gzip) of just ``pages`` (URLs of this web's pages), as a crawler would have archived them:
        a web's pages split over several WARC files, as Common Crawl publishes them."""
        from warcio.warcwriter import WARCWriter

        files = dict(zip(self.pages, self.html_files))
        unknown = [u for u in pages if u not in files]
        if unknown:
            raise ValueError(f"not pages of the demo web under {self.root}: {unknown}")
        path = Path(path)
        with open(path, "wb") as out:
            _write_page_records(WARCWriter(out, gzip=True), pages, [files[u] for u in pages])
        return path


# --- picture sources ------------------------------------------------------------------------------------------


def _fashion_images(n: int, rng: random.Random) -> list[Image.Image]:
    from tasks.datasets import fashion_mnist

    data = fashion_mnist.load("train")  # the test split stays clean for evaluation
    idx = rng.sample(range(len(data)), min(n, len(data)))
    out = []
    for i in idx:
        side = rng.choice((84, 112, 140, 168, 224))
        img = Image.fromarray(data.images[i], "L").resize((side, side), Image.Resampling.BICUBIC)
        out.append(img.convert("RGB") if rng.random() < 0.5 else img)
    return out


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # locate without importing: the packages are heavy
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def photo_paths() -> list[Path]:
    """Sample photos shipped by scikit-image and scikit-learn (the dev extra), where installed."""
    paths = []
    skimage_dir = _package_dir("skimage")
    if skimage_dir is not None:
        paths += [skimage_dir / "data" / name for name in SKIMAGE_PHOTOS]
    sklearn_dir = _package_dir("sklearn")
    if sklearn_dir is not None:
        paths += [sklearn_dir / "datasets" / "images" / name for name in SKLEARN_PHOTOS]
    return [p for p in paths if p.exists()]


def _photo_crops(n: int, rng: random.Random) -> list[Image.Image]:
    paths = photo_paths()
    if not paths or n <= 0:
        return []
    photos = [Image.open(p) for p in paths]
    for p in photos:
        p.load()
    out = []
    for _ in range(n):
        photo = rng.choice(photos)
        w, h = photo.size
        cw = rng.randint(max(64, w // 3), w)
        ch = max(64, min(h, int(cw * rng.uniform(0.6, 1.5))))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = photo.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.3:
            crop = crop.resize((crop.width * 2, crop.height * 2), Image.Resampling.BICUBIC)  # some larger than 512
        out.append(crop)
    return out


def _encode(img: Image.Image, fmt: str, rng: random.Random, **kw) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img = img.convert("RGB") if img.mode not in ("RGB", "L") else img
        img.save(buf, "JPEG", quality=rng.choice((75, 85, 92)), **kw)
    else:
        img.save(buf, fmt, **kw)
    return buf.getvalue()


def _jpeg_with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a few KB that would decode to gigabytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


# --- building -----------------------------------------------------------------------------------------------


class _Site:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.routes: dict[str, dict] = {}

    def put(self, host: str, path: str, data: bytes, **route) -> str:
        target = self.root / "sites" / host / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if route:
            self.routes[f"{host}{path}"] = route
        return f"http://{host}{path}"

    def route(self, host: str, path: str, **route) -> str:
        self.routes[f"{host}{path}"] = route
        return f"http://{host}{path}"


def _hostile_cases(site: _Site, rng: random.Random, sample: Image.Image) -> dict[str, tuple[str, str]]:
    """The bad cases, each with the (status, reason) the crawl must record."""
    ok_jpeg = _encode(sample.convert("RGB").resize((160, 160)), "JPEG", rng)
    exp: dict[str, tuple[str, str]] = {}
    exp[site.route(CDN, "/img/missing.jpg", status=404)] = ("failed", "http_404")
    exp[site.route(CDN, "/loop/a.jpg", redirect="/loop/b.jpg")] = ("failed", "redirect_loop")
    site.route(CDN, "/loop/b.jpg", redirect="/loop/a.jpg")
    for i in range(8):
        site.route(CDN, f"/chain/{i}.jpg", redirect=f"/chain/{i + 1}.jpg")
    exp[f"http://{CDN}/chain/0.jpg"] = ("failed", "too_many_redirects")
    exp[site.route(CDN, "/moved.jpg", redirect=f"http://{CDN}/img/moved-target.jpg")] = ("ok", "")
    site.put(CDN, "/img/moved-target.jpg", ok_jpeg)
    big = b"\xff\xd8\xff\xe0" + bytes(rng.getrandbits(8) for _ in range(4096)) * (BIG_BYTES // 4096)
    exp[site.put(CDN, "/big/huge.jpg", big)] = ("rejected", "too_large")
    exp[site.put(CDN, "/big/stream.jpg", big, stream=True)] = ("rejected", "too_large")  # no Content-Length
    exp[site.put(CDN, "/img/fake.jpg", b"<!doctype html><html><body>not a picture</body></html>" * 20,
                 content_type="image/jpeg")] = ("rejected", "not_an_image")
    exp[site.put(CDN, "/img/page.png", b"<html><body>hello</body></html>", content_type="text/html")] = (
        "rejected", "content_type")
    exp[site.put(CDN, "/img/vector.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
                 content_type="image/svg+xml")] = ("rejected", "unsupported_format")
    exp[site.put(CDN, "/img/bomb.png", decompression_bomb_png())] = ("rejected", "decompression_bomb")
    exp[site.put(CDN, "/img/truncated.jpg", ok_jpeg[: len(ok_jpeg) // 2])] = ("rejected", "decode_error")
    exp[site.put(CDN, "/img/tiny.png", _encode(sample.resize((16, 16)), "PNG", rng))] = ("rejected", "too_small")
    exp[site.put(CDN, "/img/banner.png", _encode(sample.resize((1200, 80)), "PNG", rng))] = (
        "rejected", "aspect_ratio")
    exp[site.put(CDN, "/noai/protected.jpg", ok_jpeg, headers={"X-Robots-Tag": "noai"})] = (
        "rejected", "x_robots_tag")
    exp[site.put(CDN, "/noai/protected2.jpg", ok_jpeg, headers={"X-Robots-Tag": "otherbot: noindex, noimageai"})] = (
        "ok", "")  # scoped to another agent: does not apply to us
    exp[site.put(SHOP, "/private/secret.jpg", ok_jpeg)] = ("rejected", "robots_disallowed")
    exp[site.put(ADS, "/banner.jpg", ok_jpeg)] = ("rejected", "domain_blocked")
    exp[site.put(CDN, "/ads/skyscraper.jpg", ok_jpeg)] = ("rejected", "url_pattern")
    exp["ftp://files.example.com/pic.jpg"] = ("rejected", "scheme")
    exp["http://10.20.30.40/internal.jpg"] = ("rejected", "ssrf_blocked")
    exp[f"http://{INTRANET}/admin.jpg"] = ("rejected", "ssrf_blocked")
    exp[site.route(CDN, "/to-metadata.jpg", redirect="http://169.254.169.254/latest/meta-data/x.jpg")] = (
        "rejected", "ssrf_blocked")
    exp[site.put(SLOW, "/stall.jpg", ok_jpeg, delay=5.0)] = ("failed", "timeout")
    exp[site.put(FLAKY, "/img/flaky.jpg", ok_jpeg, fail_first=2, fail_status=503)] = ("ok", "")
    exp[site.put(FLAKY, "/img/throttled.jpg", ok_jpeg, fail_first=1, fail_status=429)] = ("ok", "")
    exp[site.route(FLAKY, "/img/down.jpg", status=500)] = ("failed", "http_500")
    return exp


def _write_page_records(writer, urls: list[str], files: list[Path]) -> None:
    """One `200 OK` HTML response record per page: its URL and the file holding its body."""
    from warcio.statusandheaders import StatusAndHeaders

    for url, path in zip(urls, files, strict=True):
        payload = Path(path).read_bytes()
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                           ("Content-Length", str(len(payload)))], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(payload),
                                                      http_headers=http))


def build_demo_web(directory: str | os.PathLike, n_images: int = 100, seed: int = 0,
                   photo_fraction: float = 0.3) -> DemoWeb:
    """Write the demo web into `directory` (deterministic for a seed) and return what it holds."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    rng = random.Random(seed)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    site = _Site(root)
    photos = _photo_crops(int(round(n_images * photo_fraction)), rng) if photo_paths() else []
    fashion = _fashion_images(n_images - len(photos), rng)
    pictures = fashion + photos
    rng.shuffle(pictures)

    site.put(SHOP, "/robots.txt", b"User-agent: *\nDisallow: /private/\n")
    site.put(SLOW, "/robots.txt", b"User-agent: *\nAllow: /\n")
    site.routes[f"{SLOW}*"] = {"delay": 0.05}

    good: list[str] = []
    refs: list[str] = []  # one HTML snippet per picture
    for i, img in enumerate(pictures):
        host = SLOW if i % 20 == 1 else FLAKY if i % 33 == 2 else CDN
        if i % 17 == 3 and img.mode == "RGB":
            data, ext = _jpeg_with_orientation(img, 6), "jpg"  # rotated 90 degrees by EXIF
        elif i % 5 == 0:
            data, ext = _encode(img, "PNG", rng), "png"
        elif i % 13 == 7:
            data, ext = _encode(img.convert("P", palette=Image.Palette.ADAPTIVE), "GIF", rng), "gif"
        elif i % 11 == 5:
            data, ext = _encode(img, "WEBP", rng, quality=80), "webp"
        else:
            data, ext = _encode(img, "JPEG", rng), "jpg"
        path = f"/img/{i:05d}.{ext}"
        route = {"fail_first": 1, "fail_status": 503} if host == FLAKY else {}
        url = site.put(host, path, data, **route)
        good.append(url)
        if i % 7 == 2 and host == CDN:
            small = img.resize((max(1, img.width // 2), max(1, img.height // 2)))
            small_url = site.put(CDN, f"/img/{i:05d}-half.jpg", _encode(small, "JPEG", rng))
            refs.append(f'<img src="{small_url}" srcset="{small_url} {small.width}w, {url} {img.width}w" alt="">')
        elif i % 9 == 4 and host == CDN:
            refs.append(f'<picture><source srcset="{url} 2x" type="image/jpeg"><img src="{url}"></picture>')
        elif i % 10 == 6:
            refs.append(f'<img data-src="{url}" src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" class=lazy>')
        else:
            refs.append(f'<img src="{url}" alt="picture {i}">')
    logo = site.put(CDN, "/img/logo.png", _encode(pictures[0].resize((96, 96)), "PNG", rng))
    good.append(logo)

    n_pages = max(1, math.ceil(len(refs) / IMAGES_PER_PAGE))
    pages, html_files = [], []
    for p in range(n_pages):
        chunk = refs[p * IMAGES_PER_PAGE : (p + 1) * IMAGES_PER_PAGE]
        body = "\n".join(chunk)
        if p % 2 == 0:  # relative references against <base href>
            body = body.replace(f'"http://{CDN}/img/', '"').replace(f' http://{CDN}/img/', ' ')
            head = f'<base href="http://{CDN}/img/">'
        else:
            head = ""
        html = (f"<!doctype html><html><head><meta charset=utf-8><title>page {p}</title>{head}</head><body>"
                f"<h1>Catalogue {p}</h1>\n{body}\n<img src=\"{logo}\"><p>unclosed <div><span>\n</body></html>")
        pages.append(site.put(SHOP, f"/p/page-{p:04d}.html", html.encode(), content_type="text/html; charset=utf-8"))
        html_files.append(f"sites/{SHOP}/p/page-{p:04d}.html")

    expected = _hostile_cases(site, rng, pictures[0])
    hostile_refs = "\n".join(
        f'<img src="{u}">' for u in expected
    ) + '\n<img src="http://[bad-host/x.jpg"><img srcset="   ,,, "><img src="">\x00\x01\xff junk <img src=\'' + \
        "x" * 5000 + "'>"
    hostile = (f"<html><head><title>hostile</title></head><body>{hostile_refs}<table><tr><td>unclosed"
               f"<img src=\"{good[0]}\">")
    pages.append(site.put(SHOP, "/p/hostile.html", hostile.encode("utf-8", "surrogateescape"),
                          content_type="text/html"))
    html_files.append(f"sites/{SHOP}/p/hostile.html")
    expected["http://[bad-host/x.jpg"] = ("rejected", "invalid_url")

    (root / "routes.json").write_text(json.dumps(site.routes, indent=1, sort_keys=True))
    (root / "pages.txt").write_text("# demo pages\n" + "\n".join(pages) + f"\nhttp://{SHOP}/p/no-such-page.html\n")
    (root / "blocklist.txt").write_text(f"# unsafe or restricted domains\n0.0.0.0 {ADS}\nmalware.example\n")
    warc_path = root / "pages.warc.gz"
    with open(warc_path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        _write_page_records(writer, pages, [root / rel for rel in html_files])
        # A picture response and a 404 page: not HTML pages, so the crawl skips them.
        pic = (root / "sites" / CDN / "img" / "logo.png").read_bytes()
        http = StatusAndHeaders("200 OK", [("Content-Type", "image/png")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(logo, "response", payload=io.BytesIO(pic), http_headers=http))
        http = StatusAndHeaders("404 Not Found", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(f"http://{SHOP}/p/gone.html", "response",
                                                      payload=io.BytesIO(b"<img src='/x.jpg'>"), http_headers=http))
    meta = {
        "pages": pages, "good_images": good + [u for u, (s, _) in expected.items() if s == "ok"],
        "expected": expected, "html_files": html_files,
        "sources": {"fashion_mnist": len(fashion), "photo_crops": len(photos), "photo_files": len(photo_paths())},
    }
    (root / "demo.json").write_text(json.dumps(meta, indent=1))
    return DemoWeb.load(root)


# --- serving ----------------------------------------------------------------------------------------------


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self.paths: dict[str, int] = {}

    def enter(self, host: str, path: str) -> int:
        with self.lock:
            self.active[host] = self.active.get(host, 0) + 1
            self.peak[host] = max(self.peak.get(host, 0), self.active[host])
            self.requests[host] = self.requests.get(host, 0) + 1
            key = host + path
            self.paths[key] = self.paths.get(key, 0) + 1
            return self.paths[key]

    def leave(self, host: str) -> None:
        with self.lock:
            self.active[host] -= 1

    def snapshot(self) -> dict:
        with self.lock:
            return {"peak": dict(self.peak), "requests": dict(self.requests), "paths": dict(self.paths)}

    def reset(self) -> None:
        with self.lock:
            self.peak = dict(self.active)
            self.requests.clear()
            self.paths.clear()


_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".gif": "image/gif", ".webp": "image/webp",
          ".html": "text/html", ".txt": "text/plain", ".svg": "image/svg+xml"}


def _make_app(root: Path):
    from aiohttp import web

    routes: dict[str, dict] = json.loads((root / "routes.json").read_text())
    stats = _Stats()
    sites = root / "sites"

    async def handle(request: web.Request) -> web.StreamResponse:
        host = request.host.split(":")[0].lower()
        path = request.path
        if path == "/__stats__":
            return web.json_response(stats.snapshot())
        if path == "/__cpu__":  # the server's own CPU time, so benchmarks can count what serving costs
            return web.json_response({"cpu_seconds": time.process_time()})
        if path == "/__reset__":
            stats.reset()
            return web.json_response({})
        n = stats.enter(host, path)
        try:
            route = {**routes.get(f"{host}*", {}), **routes.get(f"{host}{path}", {})}
            if route.get("delay"):
                await asyncio.sleep(route["delay"])
            if n <= route.get("fail_first", 0):
                status = route.get("fail_status", 503)
                return web.Response(status=status, text="try later", headers={"Retry-After": "0"} if status == 429
                                    else None)
            if "redirect" in route:
                raise web.HTTPFound(route["redirect"])
            if "status" in route:
                return web.Response(status=route["status"], text="error")
            file = (sites / host / path.lstrip("/")).resolve()
            if not str(file).startswith(str(sites.resolve())) or not file.is_file():
                return web.Response(status=404, text="not found")
            data = file.read_bytes()
            ctype = route.get("content_type") or _TYPES.get(file.suffix, "application/octet-stream")
            headers = {"Content-Type": ctype, **route.get("headers", {})}
            if route.get("stream"):
                resp = web.StreamResponse(headers=headers)
                resp.enable_chunked_encoding()
                await resp.prepare(request)
                try:
                    for i in range(0, len(data), 1 << 16):
                        await resp.write(data[i : i + (1 << 16)])
                    await resp.write_eof()
                except ConnectionResetError:
                    pass  # the crawler hung up past its body limit, as it should
                return resp
            return web.Response(body=data, headers=headers)
        finally:
            stats.leave(host)

    app = web.Application(client_max_size=1024)
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


def _serve_forever(root: str, ready, stop_event, port_box: list | None = None) -> None:
    from aiohttp import web

    async def main() -> None:
        runner = web.AppRunner(_make_app(Path(root)), access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
        if port_box is not None:
            port_box.append(port)
            ready.set()
        else:
            ready.put(port)
        while not stop_event.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    asyncio.run(main())


@dataclass
class DemoServer:
    port: int
    web: DemoWeb

    @property
    def base_url(self) -> str:
        """Where the server listens; a request's Host header picks the virtual host."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def site_urls(self) -> dict[str, str]:
        """Base URL of each virtual host, as pages and crawl records name them (reached via `resolve`)."""
        return {host: f"http://{host}/" for host in HOSTS}

    @property
    def resolve(self) -> dict[str, str]:
        """CrawlConfig.resolve for this server: every demo host to 127.0.0.1:port, the intranet host to 10/8."""
        mapping = {h: f"127.0.0.1:{self.port}" for h in HOSTS}
        mapping[INTRANET] = "10.0.0.5:80"
        return mapping

    def crawl_settings(self) -> dict:
        """CrawlConfig fields under which every case in expected.json gets its listed reason: loopback
        allowlisted, the resolve map, the blocklist, an /ads/ pattern, a 2 MB body cap and short timeouts."""
        return dict(
            resolve=self.resolve, allow_private_networks=["127.0.0.1/32"],
            domain_blocklist_uris=[str(self.web.blocklist)], exclude_url_patterns=[r"/ads/"],
            max_bytes=2_000_000, read_timeout=1.0, request_timeout=3.0, connect_timeout=2.0,
            retries=2, backoff_base=0.02, backoff_max=0.5,
        )

    def crawl_config(self, **overrides):
        """A CrawlConfig that crawls this demo web (crawl_settings, then `overrides`)."""
        from tasks.crawl.config import CrawlConfig

        return CrawlConfig(**{**self.crawl_settings(), **overrides})

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__stats__", timeout=5) as r:
            return json.loads(r.read())

    def cpu_seconds(self) -> float:
        """CPU seconds the serving process has used (all its threads; the whole process when in a thread)."""
        with urllib.request.urlopen(f"{self.base_url}/__cpu__", timeout=5) as r:
            return json.loads(r.read())["cpu_seconds"]

    def reset_stats(self) -> None:
        urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__reset__", timeout=5).read()


@contextlib.contextmanager
def serve_demo_web(directory: str | os.PathLike, process: bool = False) -> Iterator[DemoServer]:
    """Serve a built demo web on 127.0.0.1 (free port) in a thread, or in a child process (`process=True`,
    so a benchmark's server does not share the crawler's interpreter)."""
    web_ = DemoWeb.load(directory)
    if process:
        ctx = multiprocessing.get_context("spawn")
        ready, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=_serve_forever, args=(str(directory), ready, stop), daemon=True)
        proc.start()
        try:
            port = ready.get(timeout=30)
            yield DemoServer(port, web_)
        finally:
            stop.set()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        return
    started, stop_t = threading.Event(), threading.Event()
    box: list = []
    thread = threading.Thread(target=_serve_forever, args=(str(directory), started, stop_t, box), daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("demo web server did not start")
    try:
        yield DemoServer(box[0], web_)
    finally:
        stop_t.set()
        thread.join(timeout=10)


if __name__ == "__main__":  # python -m lvd.demo_web DIR [N]: build and serve until interrupted
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "demo-web"
    built = build_demo_web(target, n_images=int(sys.argv[2]) if len(sys.argv) > 2 else 200)
    with serve_demo_web(target) as srv:
        print(json.dumps({"resolve": srv.resolve, "pages": str(built.pages_txt)}, indent=1))
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)

"""Polite, bounded HTTP fetching: global and per-host limits, retries with backoff, manual redirects that
re-run every URL check on each hop, robots.txt, the SSRF guard, and body limits enforced while streaming."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.robotparser import RobotFileParser

import aiohttp

from tasks.crawl import reasons
from tasks.crawl.config import CrawlConfig
from tasks.crawl.filters import UrlPolicy
from tasks.crawl.shared_limits import SharedHostLimits
from tasks.crawl.imaging import sniff_mime, sniff_unsupported
from tasks.crawl.netguard import AddressPolicy, BlockedAddress, GuardedResolver
from tasks.crawl.robots import parse_robots, x_robots_opt_out
from tasks.crawl.urls import InvalidURL, host_of, origin, resolve_url
from tasks.global_limits import GlobalLimitError, GlobalLimitTimeout

Accept = Literal["image", "html", "robots"]
_REDIRECTS = {301, 302, 303, 307, 308}
_ROBOTS_MAX_BYTES = 512 * 1024
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_GENERIC_TYPES = ("", "application/octet-stream", "binary/octet-stream", "application/binary")


@dataclass
class FetchResult:
    url: str
    status: str  # reasons.STATUS_*
    reason: str = ""
    detail: str = ""
    http_status: int | None = None
    final_url: str = ""
    body: bytes = b""
    content_type: str = ""
    attempts: int = 0
    elapsed: float = 0.0
    redirects: list[str] = field(default_factory=list)
    truncated: bool = False  # an html or robots body cut at its byte limit


    @property
    def ok(self) -> bool:
        return self.status == reasons.STATUS_OK


class _Outcome(Exception):
    """Ends one fetch early with a final status (raised inside the attempt loop)."""

    def __init__(self, status: str, reason: str, detail: str = "", http_status: int | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.detail, self.http_status = status, reason, detail, http_status


def _rejected(reason: str, detail: str = "", http_status: int | None = None) -> _Outcome:
    return _Outcome(reasons.STATUS_REJECTED, reason, detail, http_status)


def _failed(reason: str, detail: str = "", http_status: int | None = None) -> _Outcome:
    return _Outcome(reasons.STATUS_FAILED, reason, detail, http_status)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


class Fetcher:
    """One aiohttp session plus the crawl's politeness state; use as an async context manager."""

    def __init__(self, cfg: CrawlConfig, policy: UrlPolicy | None = None, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.policy = policy or UrlPolicy(cfg)
        self.addresses = AddressPolicy(cfg.allow_private_networks)
        self.rng = rng or random.Random(0)
        self._global = asyncio.Semaphore(cfg.max_concurrency)
        self._per_host: dict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(cfg.max_per_host))
        self._shared = SharedHostLimits(cfg)
        self._robots: dict[str, asyncio.Future] = {}
        self.session: aiohttp.ClientSession | None = None
        self.requests = 0

    async def __aenter__(self) -> "Fetcher":
        connector = aiohttp.TCPConnector(
            limit=self.cfg.max_concurrency,
            limit_per_host=0,
            resolver=GuardedResolver(self.addresses, self.cfg.resolve),
            ttl_dns_cache=300,
            enable_cleanup_closed=True,
        )
        timeout = aiohttp.ClientTimeout(
            total=self.cfg.request_timeout, sock_connect=self.cfg.connect_timeout, sock_read=self.cfg.read_timeout
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": self.cfg.user_agent},
            auto_decompress=True,
            trust_env=False,
        )
        await self._shared.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._shared.__aexit__(*exc)
        if self.session is not None:
            await self.session.close()

    # --- checks applied to every hop ------------------------------------------------------
    async def _check_url(self, url: str) -> None:
        refused = self.policy.refusal(url)
        if refused is not None:
            raise _rejected(refused[0], refused[1] or url[:200])
        literal = self.addresses.check_literal(host_of(url))
        if literal is False:
            raise _rejected(reasons.SSRF_BLOCKED, f"refused address {host_of(url)}")
        if self.cfg.respect_robots_txt:
            rules = await self._robots_for(origin(url))
            if isinstance(rules, _Outcome):
                raise rules
            if not rules.can_fetch(self.cfg.agent_name, url):
                raise _rejected(reasons.ROBOTS_DISALLOWED, f"robots.txt of {origin(url)}")

    async def _robots_for(self, site: str) -> RobotFileParser | _Outcome:
        fut = self._robots.get(site)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._robots[site] = fut
            try:
                fut.set_result(await self._load_robots(site))
            except BaseException as exc:  # never leave waiters hanging, even on cancellation
                fut.set_result(_failed(reasons.ROBOTS_UNAVAILABLE, f"robots.txt: {type(exc).__name__}"))
                raise
        return await asyncio.shield(fut)

    async def _load_robots(self, site: str) -> RobotFileParser | _Outcome:
        url = site + "/robots.txt"
        result = await self.fetch(url, accept="robots")
        if result.ok or result.reason.startswith("http_4"):
            return parse_robots(result.http_status, result.body)
        if result.http_status is not None and result.http_status >= 500:
            # RFC 9309: an unreachable robots.txt means "assume complete disallow".
            return _failed(reasons.ROBOTS_UNAVAILABLE, f"robots.txt http {result.http_status}", result.http_status)
        if result.status == reasons.STATUS_REJECTED:
            return _Outcome(result.status, result.reason, f"robots.txt: {result.detail}")
        return _failed(result.reason, f"robots.txt: {result.detail}", result.http_status)

    # --- the fetch itself -----------------------------------------------------------------
    async def fetch(self, url: str, accept: Accept = "image") -> FetchResult:
        """GET `url` following redirects by hand; never raises for network or content problems."""
        start = time.monotonic()
        result = FetchResult(url=url, status=reasons.STATUS_FAILED, final_url=url)
        current = url
        seen = {url}
        try:
            for hop in range(self.cfg.max_redirects + 1):
                if accept != "robots":
                    await self._check_url(current)
                else:
                    await self._check_robots_url(current)
                location = await self._attempts(current, accept, result)
                if location is None:
                    result.status, result.final_url = reasons.STATUS_OK, current
                    break
                try:
                    nxt = resolve_url(current, location)
                except InvalidURL as exc:
                    raise _failed(reasons.BAD_REDIRECT, f"{location[:200]!r}: {exc}") from None
                result.redirects.append(nxt)
                if nxt in seen:
                    raise _failed(reasons.REDIRECT_LOOP, " -> ".join([url, *result.redirects])[:500])
                seen.add(nxt)
                current = nxt
            else:
                raise _failed(reasons.TOO_MANY_REDIRECTS, f"more than {self.cfg.max_redirects} hops")
        except _Outcome as out:
            result.status, result.reason, result.detail = out.status, out.reason, out.detail
            result.http_status = out.http_status if out.http_status is not None else result.http_status
            result.final_url = current
            result.body = b""
        result.elapsed = time.monotonic() - start
        return result

    async def _check_robots_url(self, url: str) -> None:
        if self.policy.check(url) == reasons.SCHEME:
            raise _rejected(reasons.SCHEME, url[:200])
        if self.addresses.check_literal(host_of(url)) is False:
            raise _rejected(reasons.SSRF_BLOCKED, f"refused address {host_of(url)}")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (attempt - 1))
        delay *= 0.5 + self.rng.random()  # jitter: retries of many URLs do not arrive in lockstep
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.cfg.backoff_max)

    async def _attempts(self, url: str, accept: Accept, result: FetchResult) -> str | None:
        """Try `url` up to 1 + retries times; returns a redirect Location, or None with the body in `result`."""
        last: _Outcome | None = None
        retry_after: float | None = None
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt, retry_after))
            retry_after = None
            result.attempts += 1
            try:
                return await self._one_request(url, accept, result)
            except _Retry as r:
                last, retry_after = r.outcome, r.retry_after
        assert last is not None
        raise last

    async def _one_request(self, url: str, accept: Accept, result: FetchResult) -> str | None:
        assert self.session is not None
        site = origin(url)
        # process host slot, then the host slot shared by all workers, then the process-wide slot: a request
        # waiting for a busy host never holds a slot other hosts' requests need
        async with self._per_host[site], self._shared_slot(url), self._global:
            self.requests += 1
            try:
                async with self.session.get(url, allow_redirects=False) as resp:
                    result.http_status = resp.status
                    result.content_type = resp.headers.get("Content-Type", "")
                    if resp.status == 429 or resp.status >= 500:
                        raise _Retry(
                            _failed(reasons.http_status(resp.status), resp.reason or "", resp.status),
                            _retry_after(resp.headers.get("Retry-After")),
                        )
                    if resp.status in _REDIRECTS:
                        location = resp.headers.get("Location")
                        if not location:
                            raise _failed(reasons.BAD_REDIRECT, "redirect without Location", resp.status)
                        return location
                    if not 200 <= resp.status < 300:
                        raise _failed(reasons.http_status(resp.status), resp.reason or "", resp.status)
                    self._check_headers(resp, accept)
                    result.body, result.truncated = await self._read_body(resp, accept)
                    return None
            except (_Outcome, _Retry):
                raise
            except aiohttp.ClientConnectorDNSError as exc:
                if isinstance(exc.os_error, BlockedAddress):
                    raise _rejected(reasons.SSRF_BLOCKED, str(exc.os_error)) from None
                raise _Retry(_failed(reasons.DNS_ERROR, str(exc)[:200]), None) from None
            except (asyncio.TimeoutError, TimeoutError) as exc:
                raise _Retry(_failed(reasons.TIMEOUT, type(exc).__name__), None) from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
                raise _Retry(_failed(reasons.CONNECTION_ERROR, f"{type(exc).__name__}: {str(exc)[:160]}"), None) \
                    from None

    @asynccontextmanager
    async def _shared_slot(self, url: str) -> AsyncIterator[None]:
        """The host's slot across all workers; no slot in time is a failed fetch with its reason."""
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self._shared.slot(url))
            except GlobalLimitTimeout as exc:
                raise _failed(reasons.GLOBAL_LIMIT_TIMEOUT, str(exc)[:300]) from None
            except GlobalLimitError as exc:
                raise _failed(reasons.GLOBAL_LIMIT_ERROR, str(exc)[:300]) from None
            yield

    def _check_headers(self, resp: aiohttp.ClientResponse, accept: Accept) -> None:
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if accept == "image":
            opt_out = x_robots_opt_out(resp.headers.getall("X-Robots-Tag", []), self.cfg.agent_name,
                                       self.cfg.x_robots_block)
            if opt_out:
                raise _rejected(reasons.X_ROBOTS_TAG, opt_out, resp.status)
            if not (ctype.startswith("image/") or ctype in _GENERIC_TYPES):
                raise _rejected(reasons.CONTENT_TYPE, ctype, resp.status)
        elif accept == "html" and not (ctype in _HTML_TYPES or ctype in _GENERIC_TYPES):
            raise _rejected(reasons.NOT_HTML, ctype, resp.status)
        limit = self._limit(accept)
        if accept == "image" and resp.content_length is not None and resp.content_length > limit:
            raise _rejected(reasons.TOO_LARGE, f"Content-Length {resp.content_length} > {limit}", resp.status)

    def _limit(self, accept: Accept) -> int:
        return {"image": self.cfg.max_bytes, "html": self.cfg.max_page_bytes, "robots": _ROBOTS_MAX_BYTES}[accept]

    async def _read_body(self, resp: aiohttp.ClientResponse, accept: Accept) -> tuple[bytes, bool]:
        """The body, and whether it was cut at the limit (pages and robots files only; images are refused)."""
        limit = self._limit(accept)
        buf = bytearray()
        sniffed = accept != "image"
        async for chunk in resp.content.iter_chunked(1 << 16):
            buf += chunk
            if len(buf) > limit:
                if accept == "robots" or accept == "html":
                    # Oversized pages and robots files are truncated, as browsers and RFC 9309 do.
                    return bytes(buf[:limit]), True
                raise _rejected(reasons.TOO_LARGE, f"body exceeds {limit} bytes", resp.status)
            if not sniffed and len(buf) >= 32:
                sniffed = True
                if sniff_mime(bytes(buf[:32])) is None and sniff_unsupported(bytes(buf[:64])) is None:
                    raise _rejected(reasons.NOT_AN_IMAGE, f"magic bytes {bytes(buf[:8]).hex()}", resp.status)
        return bytes(buf), False


class _Retry(Exception):
    """A transient failure: try again after a backoff, or report `outcome` when attempts run out."""

    def __init__(self, outcome: _Outcome, retry_after: float | None) -> None:
        super().__init__(outcome.reason)
        self.outcome, self.retry_after = outcome, retry_after

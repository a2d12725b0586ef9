"""Crawl limits shared by every worker (global_limits.mode 'prefect'): per-host slots and the S3 rate.

The S3 rate is held around a whole part by tasks.crawl.stage.crawl_part_within_limits; this module is below
the stage (the fetcher uses it), so it never imports the stage.

The fetcher's own semaphores bound one process; this bounds all of them together, under one Prefect
global concurrency limit per host (or registrable domain) with `max_per_host` slots, taken per request
and given back once the response body is read or the request failed.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, nullcontext

from tasks.crawl.config import CrawlConfig
from tasks.crawl.filters import registrable_domain
from tasks.crawl.urls import host_of
from tasks.global_limits import (
    S3_REQUESTS,
    GlobalSlots,
    limit_name,
    require_shared_server,
    s3_rate_gate,
)

SETTING = "crawl.global_limits.mode='prefect'"
# A slot's lease must outlast the request holding it (request_timeout, plus any wait for the process's own
# request slots); if a worker dies holding slots, they come back when their leases end.
LEASE_FLOOR_SECONDS = 300.0


class SharedHostLimits:
    """Slots of the shared per-host limits; in 'local' mode a no-op (the process's own limits apply).
    Open with `async with` in the event loop that fetches."""

    def __init__(self, cfg: CrawlConfig) -> None:
        self.cfg = cfg
        self.shared = cfg.global_limits.mode == "prefect"
        if self.shared:
            require_shared_server(SETTING)
        self._slots = GlobalSlots(max(LEASE_FLOOR_SECONDS, 2 * cfg.request_timeout)) if self.shared else None

    async def __aenter__(self) -> "SharedHostLimits":
        if self._slots is not None:
            await self._slots.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._slots is not None:
            await self._slots.__aexit__(*exc)

    def name_for(self, url: str) -> str:
        """The limit a request to `url` counts against: lvd-host-{host} or lvd-host-{registrable domain}."""
        host = host_of(url)
        key = registrable_domain(host) if self.cfg.global_limits.host_key == "domain" else host
        return limit_name("host", key)

    def slot(self, url: str) -> AbstractAsyncContextManager[None]:
        """Hold one of the host's `max_per_host` slots across all workers (raises GlobalLimitError or
        GlobalLimitTimeout when none can be had)."""
        if self._slots is None:
            return nullcontext()
        return self._slots.hold(self.name_for(url), self.cfg.max_per_host, self.cfg.global_limits.acquire_timeout)


def prepare_crawl_limits(cfg: CrawlConfig) -> list[str]:
    """At flow start: refuse 'prefect' mode without a shared server and create the S3 rate limit with the
    configured values; returns the limits made ready. Per-host limits are created by the first worker
    that meets the host, since hosts are known only once pages are read."""
    limits = cfg.global_limits
    if limits.mode != "prefect":
        return []
    require_shared_server(SETTING)
    if limits.s3_requests_per_second is None:
        return []
    s3_rate_gate(limits.s3_requests_per_second, limits.acquire_timeout)
    return [S3_REQUESTS]


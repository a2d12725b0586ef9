"""URL policy checks that need no network: scheme, length, regex patterns, domain block/allow lists."""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import urlsplit

import tldextract

from storage.uri import read_bytes
from tasks.crawl import reasons
from tasks.crawl.config import CrawlConfig
from tasks.crawl.unsafe import UnsafeFilter


@lru_cache(maxsize=1)
def _extractor() -> tldextract.TLDExtract:
    # The bundled public-suffix snapshot only: a crawl must not depend on fetching the list. Private suffixes
    # (github.io, blogspot.com, ...) count, so one user's site can be blocked without blocking the platform.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)


def registrable_domain(host: str) -> str:
    """eTLD+1 of a host (IP addresses and single labels come back unchanged)."""
    host = host.strip("[]").rstrip(".").lower()
    result = _extractor()(host)
    return result.top_domain_under_public_suffix or host


def parse_domain_list(text: str) -> set[str]:
    """One domain per line; '#' starts a comment; hosts-file style lines ("0.0.0.0 ads.x.com") are accepted."""
    out: set[str] = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if not line:
            continue
        token = line.split()[-1].lstrip("*.").rstrip(".")
        if token:
            out.add(token)
    return out


def _matches(host: str, domains: set[str]) -> bool:
    if not domains:
        return False
    if host in domains or registrable_domain(host) in domains:
        return True
    labels = host.split(".")
    return any(".".join(labels[i:]) in domains for i in range(1, len(labels)))


class UrlPolicy:
    """Compiled URL filters of one config; `check` returns a reason code or None when the URL may be fetched."""

    def __init__(self, cfg: CrawlConfig) -> None:
        self.schemes = set(cfg.allowed_schemes)
        self.max_len = cfg.max_url_length
        self.patterns = [re.compile(p) for p in cfg.exclude_url_patterns]
        self.blocked = {d.lower().strip(".") for d in cfg.blocked_domains}
        self.allowed = {d.lower().strip(".") for d in cfg.allowed_domains}
        for uri in cfg.domain_blocklist_uris:
            self.blocked |= parse_domain_list(read_bytes(uri).decode("utf-8", "replace"))
        for uri in cfg.domain_allowlist_uris:
            self.allowed |= parse_domain_list(read_bytes(uri).decode("utf-8", "replace"))
        self.unsafe = UnsafeFilter(cfg.unsafe)

    def check(self, url: str) -> str | None:
        refused = self.refusal(url)
        return refused[0] if refused else None

    def refusal(self, url: str) -> tuple[str, str] | None:
        """(reason, detail) when the URL may not be fetched; the detail names the list that refused it."""
        reason = self._check_policy(url)
        if reason is not None:
            return reason, ""
        return self.unsafe.check(url)

    def _check_policy(self, url: str) -> str | None:
        if len(url) > self.max_len:
            return reasons.URL_TOO_LONG
        parts = urlsplit(url)
        if parts.scheme not in self.schemes:
            return reasons.SCHEME
        host = (parts.hostname or "").lower()
        if not host:
            return reasons.INVALID_URL
        if self.blocked and _matches(host, self.blocked):
            return reasons.DOMAIN_BLOCKED
        if self.allowed and not _matches(host, self.allowed):
            return reasons.DOMAIN_NOT_ALLOWED
        for pattern in self.patterns:
            if pattern.search(url):
                return reasons.URL_PATTERN
        return None

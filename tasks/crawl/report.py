"""What the crawl report shows: every reason a URL did not become a sample, with its count and meaning.

The counts are the crawl commit's `extra.reasons` (summed over parts when the stage committed);
each row of crawl/records.parquet carries the same reason, with its detail.
"""
from __future__ import annotations

import re

from tasks.crawl import reasons as r

# reason -> (kind, one line a user reads in the report)
REASONS: dict[str, tuple[str, str]] = {
    r.INVALID_URL: ("rejected", "The URL could not be parsed or normalised."),
    r.URL_TOO_LONG: ("rejected", "The URL is longer than crawl.max_url_length."),
    r.SCHEME: ("rejected", "The URL's scheme is not in crawl.allowed_schemes."),
    r.URL_PATTERN: ("rejected", "The URL matches one of crawl.exclude_url_patterns."),
    r.DOMAIN_BLOCKED: ("rejected", "The host is on a blocked-domain list (crawl.blocked_domains or its files)."),
    r.DOMAIN_NOT_ALLOWED: ("rejected", "An allow-list is set and the host is not on it."),
    r.UNSAFE_DOMAIN: ("rejected", "The domain is on an unsafe-site category list (detail: list and category)."),
    r.UNSAFE_URL: ("rejected", "The URL is on an unsafe-site category list (detail: list and category)."),
    r.BANNED_WORD: ("rejected", "The URL's words include a banned word (detail: the word)."),
    r.SSRF_BLOCKED: ("rejected", "The host resolves to a private, loopback, link-local or reserved address."),
    r.ROBOTS_DISALLOWED: ("rejected", "The site's robots.txt disallows our user agent for this path."),
    r.ROBOTS_UNAVAILABLE: ("failed", "robots.txt answered 5xx or could not be read: the site is treated as disallowed."),
    r.X_ROBOTS_TAG: ("rejected", "The image's X-Robots-Tag header opts out (crawl.x_robots_block)."),
    r.META_ROBOTS: ("rejected", "The page's <meta name=\"robots\"> or agent meta tag opts its images out."),
    r.CONTENT_TYPE: ("rejected", "The server's Content-Type is not an image type."),
    r.TOO_LARGE: ("rejected", "The body is larger than crawl.max_bytes."),
    r.NOT_AN_IMAGE: ("rejected", "The bytes are not an image, whatever the URL or header says."),
    r.UNSUPPORTED_FORMAT: ("rejected", "An image format the decoder does not accept."),
    r.DECOMPRESSION_BOMB: ("rejected", "Width x height exceeds crawl.max_pixels."),
    r.DECODE_ERROR: ("rejected", "The image is truncated or corrupt and could not be decoded."),
    r.TOO_SMALL: ("rejected", "The shorter side is below crawl.min_side."),
    r.ASPECT_RATIO: ("rejected", "The long/short side ratio exceeds crawl.max_aspect_ratio."),
    r.NOT_HTML: ("rejected", "A page URL answered with something other than HTML."),
    r.TIMEOUT: ("failed", "Connect, read or whole-request timeout, after every retry."),
    r.CONNECTION_ERROR: ("failed", "The connection was refused or reset, after every retry."),
    r.DNS_ERROR: ("failed", "The host name did not resolve."),
    r.REDIRECT_LOOP: ("failed", "A redirect led back to a URL already visited."),
    r.TOO_MANY_REDIRECTS: ("failed", "More redirect hops than crawl.max_redirects."),
    r.BAD_REDIRECT: ("failed", "A redirect without a usable Location."),
    r.WORKER_CRASHED: ("failed", "The decode worker died on this image (it is replaced)."),
    r.DECODE_TIMEOUT: ("failed", "Decoding took longer than crawl.decode_timeout."),
    r.INTERNAL_ERROR: ("failed", "An unexpected error in the crawler (detail: the exception)."),
    r.GLOBAL_LIMIT_TIMEOUT: ("failed", "No shared per-host slot came free within global_limits.acquire_timeout."),
    r.GLOBAL_LIMIT_ERROR: ("failed", "The Prefect server could not keep the shared per-host limit."),
    r.WARC_ERROR: ("failed", "A cut or corrupt WARC record (detail: its offset); reading resumes after it."),
    r.UNREADABLE_INPUT: ("failed", "A crawl input file could not be read."),
    r.PAGE_TRUNCATED: ("ok", "The page was crawled, but only its first crawl.max_page_bytes were parsed."),
}

_HTTP = re.compile(r"^http_(\d{3})$")


def describe(reason: str) -> tuple[str, str]:
    """(kind, description) of a reason code; `http_404` and friends are spelled out."""
    if reason in REASONS:
        return REASONS[reason]
    match = _HTTP.match(reason)
    if match:
        return "failed", f"The server answered HTTP {match.group(1)} (429 and 5xx after every retry)."
    return "", "(no description)"


def reasons_table(counts: dict[str, int]) -> list[dict]:
    """One row per reason that occurred, most frequent first: reason, kind, count, description."""
    rows = []
    for reason, count in sorted(counts.items(), key=lambda kv: (-int(kv[1]), kv[0])):
        kind, text = describe(reason)
        rows.append({"reason": reason, "kind": kind, "count": int(count), "description": text})
    return rows

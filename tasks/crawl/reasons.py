"""Reason codes written to crawl/records.parquet, one per URL that did not become a sample.

status "rejected": policy or content says no (never retried on a rerun of the same config);
status "failed":   the network or the server let us down (a later crawl may succeed).
"""

# rejected: URL policy
INVALID_URL = "invalid_url"
URL_TOO_LONG = "url_too_long"
SCHEME = "scheme"
URL_PATTERN = "url_pattern"
DOMAIN_BLOCKED = "domain_blocked"
DOMAIN_NOT_ALLOWED = "domain_not_allowed"
UNSAFE_DOMAIN = "unsafe_domain"  # detail: list:category
UNSAFE_URL = "unsafe_url"
BANNED_WORD = "banned_word"  # detail: the word
SSRF_BLOCKED = "ssrf_blocked"
ROBOTS_DISALLOWED = "robots_disallowed"
ROBOTS_UNAVAILABLE = "robots_unavailable"
X_ROBOTS_TAG = "x_robots_tag"
# rejected: content
CONTENT_TYPE = "content_type"
TOO_LARGE = "too_large"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
DECOMPRESSION_BOMB = "decompression_bomb"
DECODE_ERROR = "decode_error"
TOO_SMALL = "too_small"
ASPECT_RATIO = "aspect_ratio"
# failed: transport
HTTP_STATUS = "http_{code}"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
DNS_ERROR = "dns_error"
REDIRECT_LOOP = "redirect_loop"
TOO_MANY_REDIRECTS = "too_many_redirects"
BAD_REDIRECT = "bad_redirect"
WORKER_CRASHED = "worker_crashed"
INTERNAL_ERROR = "internal_error"
GLOBAL_LIMIT_TIMEOUT = "global_limit_timeout"  # no shared per-host slot came free in time
GLOBAL_LIMIT_ERROR = "global_limit_error"  # the Prefect server could not keep the shared per-host limit
# page-level (URL-list inputs)
NOT_HTML = "not_html"
# page-level, status "ok": the page was crawled, but only its first max_page_bytes were parsed
PAGE_TRUNCATED = "page_truncated"
# page-level, status "rejected": the page's own <meta name="robots"|agent> opts its images out
META_ROBOTS = "meta_robots"

STATUS_OK = "ok"
STATUS_REJECTED = "rejected"
STATUS_FAILED = "failed"


def http_status(code: int) -> str:
    return HTTP_STATUS.format(code=code)

# input-level
WARC_ERROR = "warc_error"
UNREADABLE_INPUT = "unreadable_input"
DECODE_TIMEOUT = "decode_timeout"

"""Typed configuration of the crawl stage (one model, rendered as a form by Prefect)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class GlobalLimitsConfig(BaseModel):
    """Limits that hold across every worker process of a crawl, kept by the Prefect server.

    Each worker also keeps its own per-process limits; these come on top, because several workers
    crawling parts at once would otherwise each send `max_per_host` requests to the same host.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["local", "prefect"] = Field(
        "local",
        description="local: per-process limits only; prefect: also Prefect global concurrency limits shared by "
        "all workers (needs PREFECT_API_URL pointing at a server every worker reaches).",
    )
    host_key: Literal["host", "domain"] = Field(
        "host",
        description="What one global per-host limit covers: the host name (all ports and schemes), or the "
        "registrable domain (img1.cdn.com and img2.cdn.com share one limit).",
    )
    acquire_timeout: float = Field(
        120.0, gt=0, le=3600,
        description="Seconds a request waits for a global slot; then the URL fails with reason "
        "global_limit_timeout.",
    )
    s3_requests_per_second: float | None = Field(
        None, gt=0, le=100_000,
        description="S3 requests per second of all crawl parts together (input reads, shard and record uploads); "
        "None: not rate limited. Needs mode prefect.",
    )

    @model_validator(mode="after")
    def _rate_needs_prefect(self) -> "GlobalLimitsConfig":
        if self.s3_requests_per_second is not None and self.mode != "prefect":
            raise ValueError("global_limits.s3_requests_per_second needs global_limits.mode 'prefect' "
                             "(a rate shared by all workers is kept by the Prefect server)")
        return self


class UnsafeFilterConfig(BaseModel):
    """Offline refusal of unsafe and restricted sites, before any request is sent.

    Category lists follow the UT1 / squidGuard layout (`<category>/domains`, `<category>/urls`); banned words
    are matched on the URL's words, as FineWeb's URL filter does. Both come from installed packages, so a crawl
    never downloads a list.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Refuse URLs of unsafe sites (recorded as unsafe_domain, unsafe_url "
                          "or banned_word, with the list and category in the record's detail).")
    builtin_lists: bool = Field(True, description="Use the UT1-derived adult domain and URL list that the "
                                "datatrove package ships (about 4.6M domains, matched with subdomains).")
    banned_words: bool = Field(True, description="Refuse URLs whose words include a banned word, two soft-banned "
                               "words, or whose letters contain a banned sub-word (datatrove's word lists).")
    list_uris: list[str] = Field(
        default_factory=list,
        description="More UT1 / squidGuard-format lists (any storage URI): a folder or .tar.gz holding "
        "<category>/domains and <category>/urls files.",
    )
    categories: list[str] = Field(
        default_factory=lambda: ["adult", "malware", "phishing"],
        description="Categories of list_uris that are applied (others in those lists are ignored).",
    )


class CrawlConfig(BaseModel):
    """Everything that decides which image URLs are fetched and how they are stored."""

    model_config = ConfigDict(extra="forbid")

    # --- planning -------------------------------------------------------------------------
    pages_per_part: int = Field(
        200, ge=1, le=1_000_000,
        description="Page URLs (URL-list inputs) or HTML files grouped into one part; a WARC file is always one part.",
    )
    max_samples_per_shard: int = Field(
        10_000, ge=1, le=1_000_000, description="Images per pool tar before a part rolls over to its next shard."
    )

    # --- extraction -----------------------------------------------------------------------
    srcset: Literal["largest", "all"] = Field(
        "largest",
        description="From a srcset take only the largest candidate (by w, else x descriptor; it replaces the element's "
        "src fallback) or every candidate plus src.",
    )
    max_page_bytes: int = Field(5_000_000, ge=1_000, le=200_000_000, description="HTML beyond this is not parsed.")
    max_url_length: int = Field(2048, ge=64, le=65_536, description="Longer URLs are rejected (url_too_long).")

    # --- filters --------------------------------------------------------------------------
    allowed_schemes: list[Literal["http", "https"]] = Field(
        default_factory=lambda: ["http", "https"], description="URL schemes that may be fetched."
    )
    blocked_domains: list[str] = Field(
        default_factory=list, description="Hosts or registrable domains never fetched (matched with subdomains)."
    )
    allowed_domains: list[str] = Field(
        default_factory=list, description="If non-empty, only these hosts or registrable domains are fetched."
    )
    domain_blocklist_uris: list[str] = Field(
        default_factory=list, description="Files (any storage URI) with one blocked domain per line, # comments."
    )
    domain_allowlist_uris: list[str] = Field(
        default_factory=list, description="Files (any storage URI) with one allowed domain per line, # comments."
    )
    unsafe: UnsafeFilterConfig = Field(
        default_factory=UnsafeFilterConfig, description="Offline unsafe-site filtering (category lists, banned words)."
    )
    exclude_url_patterns: list[str] = Field(
        default_factory=list, description="Regular expressions; a URL matching any of them is rejected (url_pattern)."
    )
    respect_robots_txt: bool = Field(True, description="Fetch robots.txt once per host and obey it for our agent.")
    x_robots_block: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noimageindex", "noindex"],
        description="Robots directives that opt out of the crawl: in an image's X-Robots-Tag header, or in a "
        "page's <meta name=\"robots\">, <meta name=\"{agent}\"> or <meta http-equiv=\"X-Robots-Tag\"> (then "
        "none of the page's images is taken). 'none' counts as 'noindex, nofollow' and 'noai' as covering "
        "'noimageai'; noindex is in by default because a dataset is an index of what it holds.",
    )
    allow_private_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs exempt from the SSRF guard (which refuses private, loopback, link-local and reserved "
        "addresses after DNS resolution and on every redirect), e.g. 127.0.0.1/32 for a local test web.",
    )
    resolve: dict[str, str] = Field(
        default_factory=dict,
        description="Static name resolution: 'host' or 'host:port' -> 'ip:port' (like curl --connect-to). The SSRF "
        "guard still checks the target address.",
    )

    # --- download -------------------------------------------------------------------------
    user_agent: str = Field(
        "lvd-crawler/0.1 (+https://example.com/lvd-crawler)", min_length=1, max_length=512,
        description="User-Agent header; its first token is the agent name matched in robots.txt.",
    )
    max_concurrency: int = Field(64, ge=1, le=10_000, description="Requests in flight at once, all hosts together.")
    max_per_host: int = Field(4, ge=1, le=1_000, description="Requests in flight at once to one host (host:port).")
    global_limits: GlobalLimitsConfig = Field(
        default_factory=GlobalLimitsConfig,
        description="Per-host concurrency and S3 request rate shared by all workers through Prefect.",
    )
    connect_timeout: float = Field(5.0, gt=0, le=300, description="Seconds to open a TCP connection.")
    read_timeout: float = Field(10.0, gt=0, le=600, description="Seconds without a byte before a read times out.")
    request_timeout: float = Field(30.0, gt=0, le=3600, description="Seconds for one whole request, body included.")
    retries: int = Field(3, ge=0, le=20, description="Extra attempts after a timeout, connection error, 429 or 5xx.")
    backoff_base: float = Field(0.2, ge=0, le=60, description="First backoff in seconds; doubles per attempt.")
    backoff_max: float = Field(10.0, ge=0, le=600, description="Cap of one backoff (Retry-After included).")
    max_redirects: int = Field(5, ge=0, le=50, description="Redirect hops followed before too_many_redirects.")
    max_bytes: int = Field(
        20_000_000, ge=1_000, le=2_000_000_000, description="Largest body accepted; enforced while streaming."
    )

    # --- decode / resize ------------------------------------------------------------------
    decode_workers: int | None = Field(
        None, ge=1, le=256, description="Worker processes for decode/resize; None = one per CPU core."
    )
    decode_timeout: float = Field(
        60.0, gt=0, le=3600, description="Seconds one image may take to decode; then its worker is replaced."
    )
    max_pixels: int = Field(
        89_478_485, ge=1_000, le=2_000_000_000,
        description="Width x height above which an image is refused as a decompression bomb.",
    )
    min_side: int = Field(64, ge=1, le=100_000, description="Images whose shorter side is smaller are rejected.")
    max_aspect_ratio: float = Field(
        4.0, ge=1.0, le=1000.0, description="Images whose long/short side ratio exceeds this are rejected."
    )
    max_side: int = Field(512, ge=16, le=16_384, description="Longest side after resize (never upscaled).")
    jpeg_quality: int = Field(90, ge=1, le=100, description="Quality of the re-encoded JPEG.")

    @field_validator("allow_private_networks")
    @classmethod
    def _valid_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    @field_validator("resolve")
    @classmethod
    def _valid_targets(cls, value: dict[str, str]) -> dict[str, str]:
        for target in value.values():
            host, sep, port = target.rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"resolve target must be 'ip:port', got {target!r}")
            ipaddress.ip_address(host.strip("[]"))
        return value

    @field_validator("exclude_url_patterns")
    @classmethod
    def _valid_patterns(cls, value: list[str]) -> list[str]:
        import re

        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regular expression {pattern!r}: {exc}") from exc
        return value

    @property
    def agent_name(self) -> str:
        """The product token robots.txt rules are matched against."""
        return self.user_agent.split("/")[0].split()[0]

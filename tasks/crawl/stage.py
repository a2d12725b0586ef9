"""The crawl stage: plan parts, crawl one part (extract, filter, download, decode, shard), finalize.

Entry points for the flow: plan_crawl_parts, crawl_part (crawl_part_within_limits in a worker), finalize_crawl.
No Prefect here.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from dataclasses import asdict
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from storage.commit import commit_stage, config_digest, mark_part_done, part_done
from storage.shards import ShardInfo, ShardWriter, write_manifest
from storage.tables import read_table, write_table
from storage.uri import join, list_files, remove
from tasks.crawl import reasons
from tasks.crawl.config import CrawlConfig
from tasks.crawl.decode_pool import DecodePool
from tasks.crawl.fetch import Fetcher, FetchResult
from tasks.crawl.filters import UrlPolicy
from tasks.crawl.html_extract import decode_html, extract_image_refs
from tasks.crawl.imaging import ImageParams, Refused
from tasks.crawl.records import RECORDS_SCHEMA, record
from tasks.crawl.robots import meta_robots_opt_out
from tasks.crawl.scheduler import run_per_host
from tasks.crawl.sources import Page, expand_inputs, iter_warc_pages, read_html_page, read_url_lines
from tasks.crawl.spool import SampleSpool
from tasks.crawl.urls import InvalidURL, normalise_url, origin, resolve_url
from tasks.global_limits import s3_request_rate

RECORDS_FILE = "records.parquet"
PART_RECORDS_DIR = "records"


class CrawlPart(BaseModel):
    """One unit of crawl work: a WARC file, a group of HTML files, or a line range of a URL list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0, description="Position in the plan; names the part's shards and records.")
    kind: Literal["warc", "html", "urls"]
    uris: list[str] = Field(min_length=1, description="Input files of this part.")
    start: int = Field(0, ge=0, description="First line (URL lists).")
    stop: int | None = Field(None, ge=0, description="One past the last line (URL lists).")

    @property
    def name(self) -> str:
        return f"{self.index:06d}"


def plan_crawl_parts(inputs: list[str], cfg: CrawlConfig) -> list[CrawlPart]:
    """Split the inputs into parts: one per WARC, `pages_per_part` HTML files or URL-list lines per part."""
    parts: list[CrawlPart] = []
    html_batch: list[str] = []

    def flush_html() -> None:
        if html_batch:
            parts.append(CrawlPart(index=len(parts), kind="html", uris=list(html_batch)))
            html_batch.clear()

    for uri, kind in expand_inputs(inputs):
        if kind == "html":
            html_batch.append(uri)
            if len(html_batch) >= cfg.pages_per_part:
                flush_html()
            continue
        flush_html()
        if kind == "warc":
            parts.append(CrawlPart(index=len(parts), kind="warc", uris=[uri]))
        else:
            n = len(read_url_lines(uri))
            for start in range(0, max(n, 1), cfg.pages_per_part):
                parts.append(CrawlPart(index=len(parts), kind="urls", uris=[uri], start=start,
                                       stop=min(n, start + cfg.pages_per_part)))
    flush_html()
    return parts


def crawl_input_digest(parts: list[CrawlPart]) -> str:
    """Digest of a plan (which files, which ranges), for callers that have no better input identity."""
    return config_digest({"parts": [p.model_dump(mode="json") for p in parts]})


# --- shard sink -----------------------------------------------------------------------------


class ShardSink:
    """Rolls pool-{part}-{n}.tar shards at max_samples_per_shard; nothing is published until close()."""

    def __init__(self, stage_uri: str, part: int, max_samples: int) -> None:
        self.stage_uri, self.part, self.max_samples = stage_uri, part, max_samples
        self.finished: list[ShardInfo] = []
        self._writer: ShardWriter | None = None
        self._pending: list[ShardWriter] = []

    def add(self, key: str, jpg: bytes, meta: dict) -> str:
        if self._writer is None or self._writer.nsamples >= self.max_samples:
            n = len(self._pending)
            self._writer = ShardWriter(join(self.stage_uri, f"pool-{self.part:06d}-{n:03d}.tar"))
            self._pending.append(self._writer)
        self._writer.write(key, {"jpg": jpg, "json": meta})
        return self._writer.uri

    def close(self) -> list[ShardInfo]:
        self.finished = [w.close() for w in self._pending]
        return self.finished

    def abort(self) -> None:
        for w in self._pending:
            w.abort()


# --- one part -------------------------------------------------------------------------------------------------


def _run_coroutine(coro):
    """asyncio.run, also from a thread that already runs an event loop (as some task runners do)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="crawl-part")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class _PartRun:
    """State of one part while it runs: records, candidates, the spooled pictures.

    Pages and image references are taken in plan order; downloads finish in any order, so their
    records wait in `outcomes` and their pictures in the spool until :meth:`write_shards` stores
    both by key, which makes a part's shards and records the same whatever the timing.
    """

    def __init__(self, part: CrawlPart, stage_uri: str, cfg: CrawlConfig, spool: SampleSpool) -> None:
        self.part, self.stage_uri, self.cfg = part, stage_uri, cfg
        self.policy = UrlPolicy(cfg)
        self.rows: list[dict] = []
        self.outcomes: dict[str, dict] = {}  # candidate key -> its record, until write_shards
        self.spool = spool
        self.seen_images: set[str] = set()
        self.seen_pages: set[str] = set()
        self.candidates: list[tuple[str, str, str]] = []  # (url, page, key)
        self.duplicate_refs = 0
        self.pages = 0
        self.sink = ShardSink(stage_uri, part.index, cfg.max_samples_per_shard)
        self.params = ImageParams(cfg.max_pixels, cfg.min_side, cfg.max_aspect_ratio, cfg.max_side, cfg.jpeg_quality)
        self.bytes_in = 0
        self.bytes_out = 0
        self.requests = 0

    # pages ------------------------------------------------------------------------------------------------
    def add_page_row(self, url: str, source: str, status: str, reason: str = "", detail: str = "",
                     fetched: FetchResult | None = None) -> None:
        f = fetched
        self.rows.append(record(
            self.part.index, "page", url, source, status, reason, detail,
            http_status=f.http_status if f else None, nbytes=len(f.body) if f else 0,
            elapsed=f.elapsed if f else 0.0, attempts=f.attempts if f else 0,
            final_url=f.final_url if f else None,
        ))

    def take_page(self, page: Page) -> None:
        """Record a page and queue its image references (first page to reference an image owns it)."""
        if page.error is not None:
            self.add_page_row(page.url, page.source, reasons.STATUS_FAILED, *page.error)
            return
        if page.url in self.seen_pages:
            self.duplicate_refs += 1
            return
        self.seen_pages.add(page.url)
        detail = f"parsed the first {len(page.body)} of {page.full_bytes} bytes" if page.truncated else ""
        self.take_html(page.url, page.source, page.body, page.content_type, detail)

    def take_html(self, url: str, source: str, body: bytes, content_type: str, truncated: str = "",
                  fetched: FetchResult | None = None, base_url: str | None = None) -> None:
        """One page row (ok, page_truncated or meta_robots) and, unless the page opts out, its image references."""
        html = decode_html(body[: self.cfg.max_page_bytes], content_type)
        extracted = extract_image_refs(html, base_url or url, self.cfg.srcset)
        opt_out = meta_robots_opt_out(extracted.meta_directives, self.cfg.agent_name, self.cfg.x_robots_block)
        if opt_out:
            self.add_page_row(url, source, reasons.STATUS_REJECTED, reasons.META_ROBOTS, opt_out, fetched)
            return
        self.pages += 1
        reason = reasons.PAGE_TRUNCATED if truncated else ""
        self.add_page_row(url, source, reasons.STATUS_OK, reason, truncated, fetched)
        self.extract(extracted, base_url or url)

    def extract(self, extracted, page_url: str) -> None:
        for ref in extracted.refs:
            try:
                url = resolve_url(extracted.base_url, ref)
            except InvalidURL as exc:
                raw = ref.strip()[: self.cfg.max_url_length]
                if raw in self.seen_images:
                    self.duplicate_refs += 1
                    continue
                self.seen_images.add(raw)
                self.rows.append(record(self.part.index, "image", raw, page_url, reasons.STATUS_REJECTED,
                                        reasons.INVALID_URL, str(exc)[:200]))
                continue
            if url in self.seen_images:
                self.duplicate_refs += 1
                continue
            self.seen_images.add(url)
            key = f"{self.part.index:06d}-{len(self.seen_images):07d}"
            refused = self.policy.refusal(url)
            if refused is not None:
                shown = url if len(url) <= self.cfg.max_url_length else url[: self.cfg.max_url_length]
                self.rows.append(record(self.part.index, "image", shown, page_url, reasons.STATUS_REJECTED,
                                        *refused))
                continue
            self.candidates.append((url, page_url, key))

    # images -----------------------------------------------------------------------------------------------
    async def download(self, fetcher: Fetcher, pool: DecodePool) -> None:
        async def work(cand: tuple[str, str, str], release) -> None:
            url, page, key = cand
            try:
                fetched = await fetcher.fetch(url, accept="image")
                await release()
                await self.finish_image(url, page, key, fetched, pool)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must cost one record, not the part
                self.outcomes[key] = record(self.part.index, "image", url, page, reasons.STATUS_FAILED,
                                            reasons.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:300])

        workers = self.cfg.max_concurrency + 2 * pool.workers
        await run_per_host(self.candidates, lambda c: origin(c[0]), self.cfg.max_per_host, workers, work)

    async def finish_image(self, url: str, page: str, key: str, f: FetchResult, pool: DecodePool) -> None:
        common = dict(http_status=f.http_status, nbytes=len(f.body), elapsed=f.elapsed, attempts=f.attempts,
                      final_url=f.final_url)
        self.bytes_in += len(f.body)
        if not f.ok:
            self.outcomes[key] = record(self.part.index, "image", url, page, f.status, f.reason, f.detail, **common)
            return
        out = await pool.run(f.body, self.params)
        if isinstance(out, Refused):
            crashed = out.reason in (reasons.WORKER_CRASHED, reasons.DECODE_TIMEOUT)
            status = reasons.STATUS_FAILED if crashed else reasons.STATUS_REJECTED
            self.outcomes[key] = record(self.part.index, "image", url, page, status, out.reason, out.detail,
                                        sha256=out.sha256 or None, **common)
            return
        meta = {
            "url": url, "page": page, "final_url": f.final_url, "sha256": out.sha256, "mime": out.mime,
            "content_type": f.content_type, "original_width": out.orig_width, "original_height": out.orig_height,
            "original_bytes": out.orig_bytes, "width": out.width, "height": out.height, "bytes": len(out.jpeg),
            "key": key,
        }
        self.spool.add(key, out.jpeg, meta)
        self.bytes_out += len(out.jpeg)
        self.outcomes[key] = record(self.part.index, "image", url, page, reasons.STATUS_OK, sha256=out.sha256,
                                    key=key, **common)

    def write_shards(self) -> list[ShardInfo]:
        """Store the spooled pictures in key order, then the download records in key order."""
        for key, jpg, meta in self.spool.in_key_order():
            self.outcomes[key]["shard"] = self.sink.add(key, jpg, meta)
        self.rows.extend(self.outcomes[key] for key in sorted(self.outcomes))
        self.outcomes.clear()
        return self.sink.close()

    async def fetch_pages(self, fetcher: Fetcher, lines: list[str], source: str) -> None:
        urls: list[str] = []
        for line in lines:
            if not line:
                continue
            try:
                url = normalise_url(line)
            except InvalidURL as exc:
                url = None
                if line not in self.seen_pages:
                    self.seen_pages.add(line)
                    self.add_page_row(line[: self.cfg.max_url_length], source, reasons.STATUS_REJECTED,
                                      reasons.INVALID_URL, str(exc)[:200])
                else:
                    self.duplicate_refs += 1
                continue
            if url in self.seen_pages:
                self.duplicate_refs += 1
                continue
            self.seen_pages.add(url)
            refused = self.policy.refusal(url)
            if refused is not None:  # the detail names the unsafe list and category, as for images
                self.add_page_row(url[: self.cfg.max_url_length], source, reasons.STATUS_REJECTED, *refused)
                continue
            urls.append(url)

        fetched: dict[str, FetchResult] = {}

        async def work(url: str, release) -> None:
            fetched[url] = await fetcher.fetch(url, accept="html")

        await run_per_host(urls, origin, self.cfg.max_per_host, self.cfg.max_concurrency, work)
        for url in urls:  # in input order, so keys and records are deterministic
            f = fetched[url]
            self.bytes_in += len(f.body)
            if not f.ok:
                self.add_page_row(url, source, f.status, f.reason, f.detail, f)
                continue
            cut = f"parsed the first {len(f.body)} bytes; the page is longer" if f.truncated else ""
            self.take_html(url, source, f.body, f.content_type, cut, f, base_url=f.final_url)


async def _crawl(run: _PartRun) -> None:
    part, cfg = run.part, run.cfg
    workers = cfg.decode_workers or os.cpu_count() or 1
    async with Fetcher(cfg, run.policy) as fetcher, DecodePool(workers, cfg.decode_timeout) as pool:
        if part.kind == "warc":
            for page in iter_warc_pages(part.uris[0], cfg.max_page_bytes):
                run.take_page(page)
        elif part.kind == "html":
            for uri in part.uris:
                run.take_page(read_html_page(uri, cfg.max_page_bytes))
        else:
            lines = read_url_lines(part.uris[0])[part.start : part.stop]
            await run.fetch_pages(fetcher, lines, part.uris[0])
        await run.download(fetcher, pool)
        run.requests = fetcher.requests


def part_records_uri(stage_uri: str, part: CrawlPart) -> str:
    return join(stage_uri, PART_RECORDS_DIR, f"part-{part.name}.parquet")


def crawl_part(part: CrawlPart, stage_uri: str, cfg: CrawlConfig) -> dict:
    """Crawl one part into its own shards and records; returns (and stores) a JSON summary. Idempotent."""
    if isinstance(part, dict):
        part = CrawlPart.model_validate(part)
    done = part_done(stage_uri, part.name)
    if done is not None:
        return done
    for stale in list_files(stage_uri, suffix=".tar"):  # shards left by an interrupted run of this part
        if stale.rsplit("/", 1)[-1].startswith(f"pool-{part.name}-"):
            remove(stale)
    started = time.monotonic()
    with SampleSpool() as spool:
        run = _PartRun(part, stage_uri, cfg, spool)
        try:
            _run_coroutine(_crawl(run))
            shards = run.write_shards()
        except BaseException:
            run.sink.abort()
            raise
    records_uri = part_records_uri(stage_uri, part)
    write_table(records_uri, run.rows, RECORDS_SCHEMA)
    images = [r for r in run.rows if r["kind"] == "image"]
    summary = {
        "part": part.index,
        "records": records_uri,
        "shards": [asdict(s) for s in shards],
        "pages": sum(1 for r in run.rows if r["kind"] == "page"),
        "images": len(images),
        "ok": sum(1 for r in images if r["status"] == reasons.STATUS_OK),
        "rejected": sum(1 for r in images if r["status"] == reasons.STATUS_REJECTED),
        "failed": sum(1 for r in images if r["status"] == reasons.STATUS_FAILED),
        "duplicate_refs": run.duplicate_refs,
        "reasons": dict(Counter(r["reason"] for r in run.rows if r["reason"])),
        "bytes_downloaded": run.bytes_in,
        "bytes_stored": run.bytes_out,
        "requests": run.requests,
        "seconds": round(time.monotonic() - started, 3),
    }
    mark_part_done(stage_uri, part.name, summary)
    return summary



def crawl_part_within_limits(part, stage_uri: str, cfg: CrawlConfig) -> dict:
    """`crawl_part` in whichever worker runs it, its S3 requests at the rate shared by all workers (the
    per-host limits come with its fetcher)."""
    with s3_request_rate(cfg.global_limits.s3_requests_per_second, cfg.global_limits.acquire_timeout):
        return crawl_part(part, stage_uri, cfg)

def finalize_crawl(stage_uri: str, parts: list[CrawlPart], cfg: CrawlConfig, input_digest: str) -> dict:
    """Merge the parts' records into records.parquet, write the shard manifest and commit the stage."""
    summaries = []
    missing = []
    for part in parts:
        if isinstance(part, dict):
            part = CrawlPart.model_validate(part)
        s = part_done(stage_uri, part.name)
        (missing.append(part.name) if s is None else summaries.append(s))
    if missing:
        raise RuntimeError(f"cannot finalize {stage_uri}: parts {missing[:10]} are not done")
    tables = [read_table(s["records"], schema=RECORDS_SCHEMA) for s in summaries]
    merged = pa.concat_tables(tables) if tables else RECORDS_SCHEMA.empty_table()
    write_table(join(stage_uri, RECORDS_FILE), merged, RECORDS_SCHEMA)
    shards = [ShardInfo(**s_info) for s in summaries for s_info in s["shards"]]
    reason_counts: Counter = Counter()
    for s in summaries:
        reason_counts.update(s["reasons"])
    counts = {
        "parts": len(summaries),
        "pages": sum(s["pages"] for s in summaries),
        "images": sum(s["images"] for s in summaries),
        "ok": sum(s["ok"] for s in summaries),
        "rejected": sum(s["rejected"] for s in summaries),
        "failed": sum(s["failed"] for s in summaries),
        "samples": sum(x.nsamples for x in shards),
        "shards": len(shards),
        "bytes_downloaded": sum(s["bytes_downloaded"] for s in summaries),
        "bytes_stored": sum(s["bytes_stored"] for s in summaries),
    }
    if not shards:
        raise RuntimeError(
            f"crawl of {stage_uri} produced no images ({counts['images']} image URLs; reasons "
            f"{dict(reason_counts.most_common(8))}); see {join(stage_uri, RECORDS_FILE)}"
        )
    write_manifest(stage_uri, shards)
    return commit_stage(
        stage_uri, stage="crawl", config_digest=config_digest(cfg), input_digest=input_digest, counts=counts,
        extra={"reasons": dict(reason_counts)}, require_parts=[p.name if isinstance(p, CrawlPart) else
                                                                 CrawlPart.model_validate(p).name for p in parts],
    )

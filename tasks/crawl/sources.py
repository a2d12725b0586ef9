"""Crawl inputs: WARC files, saved HTML pages and lists of page URLs, from local paths or S3."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from tasks.crawl import reasons
from tasks.crawl.warc import iter_warc_records
from storage.uri import exists, glob_files, is_glob, list_files, open_input, read_bytes, scheme_of

InputKind = Literal["warc", "html", "urls"]
_SUFFIXES: list[tuple[str, InputKind]] = [
    (".warc.gz", "warc"),
    (".warc", "warc"),
    (".html", "html"),
    (".htm", "html"),
    (".txt", "urls"),
    (".urls", "urls"),
]


def input_kind(uri: str) -> InputKind | None:
    name = uri.lower().rstrip("/")
    for suffix, kind in _SUFFIXES:
        if name.endswith(suffix):
            return kind
    return None


def as_file_uri(uri: str) -> str:
    """Page URL used for a local HTML file: an absolute file:// URI (never fetched; see extract_image_refs)."""
    if scheme_of(uri) == "file":
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return "file://" + os.path.abspath(os.path.expanduser(path))
    return uri


def expand_inputs(inputs: list[str]) -> list[tuple[str, InputKind]]:
    """Each input file with its kind; a directory or prefix expands to the known files directly under it,
    a glob (``s3://bucket/crawl/2026-*/*.warc.gz``, ``**`` across folders) to the known files it matches
    now, so a scheduled refresh picks up new files by itself."""
    out: list[tuple[str, InputKind]] = []
    for uri in inputs:
        if is_glob(uri):
            matched = [(m, input_kind(m)) for m in glob_files(uri)]
            known = [(m, k) for m, k in matched if k is not None]
            if not known:
                raise FileNotFoundError(f"crawl input pattern {uri!r} matches no .warc/.warc.gz, .html/.htm or "
                                        f".txt/.urls file ({len(matched)} other files)")
            out.extend(known)  # type: ignore[arg-type]
            continue
        kind = input_kind(uri)
        if kind is not None:
            if not exists(uri):
                raise FileNotFoundError(f"crawl input {uri} does not exist")
            out.append((uri, kind))
            continue
        children = [(c, input_kind(c)) for c in list_files(uri)]
        known = [(c, k) for c, k in children if k is not None]
        if not known:
            raise ValueError(
                f"crawl input {uri!r} is neither a .warc/.warc.gz, .html/.htm or .txt/.urls file "
                "nor a directory holding such files"
            )
        out.extend(known)  # type: ignore[arg-type]
    unique = dict.fromkeys(out)  # a file named twice (two patterns, a pattern and a path) is one input
    return list(unique)


def read_url_lines(uri: str) -> list[str]:
    """Lines of a URL list; blank lines and '#' comments become empty strings (kept for stable line numbers)."""
    text = read_bytes(uri).decode("utf-8", errors="replace")
    return [line.strip() if line.strip() and not line.lstrip().startswith("#") else "" for line in text.splitlines()]


@dataclass
class Page:
    """One HTML document to extract image references from, or the reason it could not be read."""

    url: str
    source: str
    body: bytes = b""
    content_type: str = ""
    error: tuple[str, str] | None = None  # (reason, detail)
    full_bytes: int = 0  # size of the whole document; more than len(body) when cut at max_page_bytes

    @property
    def truncated(self) -> bool:
        return self.full_bytes > len(self.body)


def iter_warc_pages(uri: str, max_page_bytes: int) -> Iterator[Page]:
    """HTML responses (and resources) of a WARC; each damaged record becomes an error page with its offset."""
    with open_input(uri) as stream:
        for rec in iter_warc_records(stream, max_page_bytes):
            if rec.error:
                yield Page(url=rec.target or uri, source=uri, error=(reasons.WARC_ERROR, rec.error[:300]))
                continue
            if rec.rec_type not in ("response", "resource"):
                continue
            if rec.rec_type == "response" and not rec.http_status.startswith("2"):
                continue
            if rec.content_type.lower().split(";")[0].strip() not in ("text/html", "application/xhtml+xml"):
                continue
            yield Page(url=rec.target, source=uri, body=rec.body, content_type=rec.content_type,
                       full_bytes=rec.body_bytes)


def read_html_page(uri: str, max_page_bytes: int) -> Page:
    try:
        whole = read_bytes(uri)
    except (FileNotFoundError, OSError) as exc:
        return Page(url=as_file_uri(uri), source=uri, error=(reasons.UNREADABLE_INPUT, f"{type(exc).__name__}: {exc}"[:200]))
    return Page(url=as_file_uri(uri), source=uri, body=whole[:max_page_bytes], content_type="text/html",
                full_bytes=len(whole))

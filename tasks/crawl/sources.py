"""Crawl inputs: WARC files, saved HTML pages and lists of page URLs, from local paths or S3."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from tasks.crawl import reasons
from storage.uri import exists, list_files, open_input, read_bytes, scheme_of

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
    """Each input file with its kind; a directory or prefix expands to the known files directly under it."""
    out: list[tuple[str, InputKind]] = []
    for uri in inputs:
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
    return out


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


def iter_warc_pages(uri: str, max_page_bytes: int) -> Iterator[Page]:
    """HTML responses (and resources) of a WARC; a corrupt record ends the file with a recorded error."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    with open_input(uri) as stream:
        it = ArchiveIterator(stream)
        while True:
            try:
                record = next(it)
            except StopIteration:
                return
            except (ArchiveLoadFailed, ValueError, OSError, EOFError, zlib.error) as exc:
                yield Page(url=uri, source=uri, error=(reasons.WARC_ERROR, f"{type(exc).__name__}: {str(exc)[:200]}"))
                return
            if record.rec_type not in ("response", "resource"):
                continue
            target = record.rec_headers.get_header("WARC-Target-URI") or ""
            if record.rec_type == "response":
                if record.http_headers is None:
                    continue
                ctype = record.http_headers.get_header("Content-Type") or ""
                status = record.http_headers.get_statuscode() or ""
                if not status.startswith("2"):
                    continue
            else:
                ctype = record.rec_headers.get_header("Content-Type") or ""
            if not ctype.lower().split(";")[0].strip() in ("text/html", "application/xhtml+xml"):
                continue
            try:
                body = record.content_stream().read(max_page_bytes)
            except (ArchiveLoadFailed, ValueError, OSError, EOFError, zlib.error) as exc:
                yield Page(url=target or uri, source=uri, error=(reasons.WARC_ERROR, f"{type(exc).__name__}: {exc}"[:200]))
                return
            yield Page(url=target, source=uri, body=body, content_type=ctype)


def read_html_page(uri: str, max_page_bytes: int) -> Page:
    try:
        body = read_bytes(uri)[:max_page_bytes]
    except (FileNotFoundError, OSError) as exc:
        return Page(url=as_file_uri(uri), source=uri, error=(reasons.UNREADABLE_INPUT, f"{type(exc).__name__}: {exc}"[:200]))
    return Page(url=as_file_uri(uri), source=uri, body=body, content_type="text/html")

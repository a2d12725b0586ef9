"""WARC reading that accounts for every record: damage is reported with its byte offset, never skipped silently.

warcio parses the records; this module checks that each record's block is as long as its Content-Length (a cut
file otherwise yields a short page as if it were whole) and, after a corrupt gzip member or junk between records,
resumes at the next record start instead of dropping the rest of the file.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

# warcio raises these on damaged bytes; a cut header can also surface as AttributeError/TypeError inside it.
_READ_ERRORS = (ArchiveLoadFailed, ValueError, OSError, EOFError, zlib.error, AttributeError, TypeError, KeyError,
                IndexError)
_GZIP_MAGIC = b"\x1f\x8b\x08"
_WARC_MAGIC = b"WARC/1."
_SCAN_CHUNK = 1 << 20


@dataclass
class WarcRecord:
    """One record as read: its offset, and either its parsed content or what went wrong with it."""

    offset: int
    rec_type: str = ""
    target: str = ""
    content_type: str = ""
    http_status: str = ""
    body: bytes = b""
    body_bytes: int = 0  # whole payload length; larger than len(body) when cut at the page cap
    error: str = ""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:160]}"


def _read_record(record, offset: int, max_body: int) -> WarcRecord:
    out = WarcRecord(offset=offset, rec_type=record.rec_type or "",
                     target=record.rec_headers.get_header("WARC-Target-URI") or "")
    if record.rec_type == "response" and record.http_headers is not None:
        out.content_type = record.http_headers.get_header("Content-Type") or ""
        out.http_status = record.http_headers.get_statuscode() or ""
    else:
        out.content_type = record.rec_headers.get_header("Content-Type") or ""
    declared = (record.rec_headers.get_header("Content-Length") or "").strip()
    if not declared.isdigit():  # warcio reads a cut or missing length as an empty block
        out.error = f"offset {offset}: missing or bad Content-Length {declared[:20]!r}"
        return out
    stream = record.content_stream()
    out.body = stream.read(max_body)
    out.body_bytes = len(out.body)
    while chunk := stream.read(1 << 16):
        out.body_bytes += len(chunk)
    missing = record.raw_stream.limit
    if missing > 0:
        out.error = f"offset {offset}: record cut short, {record.length - missing} of Content-Length {declared} bytes"
    return out


def _next_start(stream: BinaryIO, after: int, magic: bytes) -> int | None:
    """Offset of the next `magic` after `after` where a readable record begins, else None."""
    pos = after + 1
    while True:
        stream.seek(pos)
        chunk = stream.read(_SCAN_CHUNK + len(magic))
        if not chunk:
            return None
        i = chunk.find(magic)
        while i != -1:
            if _readable_at(stream, pos + i):
                return pos + i
            i = chunk.find(magic, i + 1)
        pos += _SCAN_CHUNK


def _readable_at(stream: BinaryIO, offset: int) -> bool:
    stream.seek(offset)
    try:
        next(iter(ArchiveIterator(stream)))
        return True
    except (StopIteration, *_READ_ERRORS):
        return False


def _unread_bytes(stream: BinaryIO, offset: int) -> int:
    """Bytes from `offset` to the end of the file, 0 when only blank lines remain."""
    stream.seek(offset)
    total, content = 0, False
    while chunk := stream.read(_SCAN_CHUNK):
        total += len(chunk)
        content = content or bool(chunk.strip())
    return total if content else 0


def iter_warc_records(stream: BinaryIO, max_body: int) -> Iterator[WarcRecord]:
    """Every record of a WARC (gzip per record or plain), damaged ones as errors carrying their offset."""
    head = stream.read(len(_GZIP_MAGIC))
    magic = _GZIP_MAGIC if head == _GZIP_MAGIC else _WARC_MAGIC
    base = 0
    while base is not None:
        stream.seek(base)
        it = ArchiveIterator(stream)
        start = base
        try:
            for record in it:
                start = it.offset
                rec = _read_record(record, start, max_body)
                it.read_to_end(record)
                yield rec
                start = it.offset
            rest = _unread_bytes(stream, start)
            if rest:
                yield WarcRecord(offset=start, error=f"offset {start}: {rest} bytes after the last record are "
                                                     "not a complete record (file cut short?)")
            return
        except _READ_ERRORS as exc:
            yield WarcRecord(offset=start, error=f"offset {start}: {_describe(exc)}")
        base = _next_start(stream, start, magic)

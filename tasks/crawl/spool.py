"""Pictures of one crawl part held on local disk until the part ends, then handed out in key order.

Downloads finish in whatever order the network and the decode pool allow, but a part's shards
must not depend on that: the same web crawled twice, on threads or on a cluster, has to give the
same bytes. The spool appends each picture to a temporary file as it arrives and keeps only
(key, offset, length, metadata) in memory, so a part holds no more than its bounded metadata
while the pictures wait on disk (under ``$LVD_SPOOL_DIR`` or the system temp dir).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class _Entry:
    offset: int
    size: int
    meta: dict


class SampleSpool:
    """Append (key, jpg, meta) in any order; :meth:`in_key_order` reads them back sorted by key."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="lvd-crawl-spool-", dir=os.environ.get("LVD_SPOOL_DIR"))
        self._entries: dict[str, _Entry] = {}
        self._end = 0

    def __enter__(self) -> "SampleSpool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: str, jpg: bytes, meta: dict) -> None:
        if key in self._entries:
            raise ValueError(f"crawl spool: sample key {key!r} added twice")
        self._file.seek(self._end)
        self._file.write(jpg)
        self._entries[key] = _Entry(self._end, len(jpg), meta)
        self._end += len(jpg)

    def in_key_order(self) -> Iterator[tuple[str, bytes, dict]]:
        """Every sample as (key, jpg, meta), keys ascending, one picture in memory at a time."""
        self._file.flush()
        for key in sorted(self._entries):
            entry = self._entries[key]
            self._file.seek(entry.offset)
            jpg = self._file.read(entry.size)
            if len(jpg) != entry.size:
                raise OSError(f"crawl spool: sample {key!r} is truncated on disk ({len(jpg)} of {entry.size} bytes)")
            yield key, jpg, entry.meta

    def close(self) -> None:
        self._file.close()
        self._entries.clear()

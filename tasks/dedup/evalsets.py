"""Read evaluation sets for decontamination: image folders or WebDataset shards, local or S3.

A URI ending in ``.tar`` is one shard; any other URI is a folder whose image files (recursively)
and ``.tar`` shards are read in sorted order. Each image gets a stable id ``{uri}#{name}`` that
the keep table records as the cause of a removal.
"""

from __future__ import annotations

from collections.abc import Iterator

from storage.shards import iter_samples
from storage.uri import join, read_bytes, walk_files

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def iter_eval_images(uri: str) -> Iterator[tuple[str, bytes]]:
    """``(eval image id, encoded bytes)`` for every image of one evaluation set."""
    if uri.endswith(".tar"):
        yield from _iter_shard(uri)
        return
    files = walk_files(uri)
    if not files:
        raise FileNotFoundError(f"evaluation set {uri} holds no files")
    found = False
    for rel in files:
        low = rel.lower()
        if low.endswith(".tar"):
            found = True
            yield from _iter_shard(join(uri, rel))
        elif low.endswith(IMAGE_SUFFIXES):
            found = True
            yield f"{uri.rstrip('/')}#{rel}", read_bytes(join(uri, rel))
    if not found:
        raise FileNotFoundError(f"evaluation set {uri} holds no images or .tar shards")


def _iter_shard(uri: str) -> Iterator[tuple[str, bytes]]:
    for key, fields in iter_samples(uri):
        ext = next((e for e in fields if e.lower() in ("jpg", "jpeg", "png", "webp")), None)
        if ext is not None:
            yield f"{uri}#{key}", fields[ext]

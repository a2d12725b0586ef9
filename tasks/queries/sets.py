"""Read curated query sets: image folders (class subfolders as labels), WebDataset shards, Parquet lists.

Every image gets a stable string id (relative path, ``shard/key`` or the listed path), so the
selection can name the query that picked a pool image and the shard writer can fetch
``as-is`` images again.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq

from storage.uri import basename, exists, join, list_files, open_input, read_bytes, walk_files
from tasks.queries.config import QuerySetConfig
from lvd.errors import LvdError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_LABEL_EXTENSIONS = ("cls", "label", "txt")


class QuerySetError(LvdError, ValueError):
    """A query set that cannot be used (missing, empty or unreadable); raised before any work starts."""


@dataclass(frozen=True)
class QueryImage:
    """One curated image: stable id, optional class label, encoded bytes."""

    id: str
    label: str | None
    data: bytes


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def resolve_format(qs: QuerySetConfig) -> str:
    """The concrete reader for ``qs`` (resolving ``auto``); QuerySetError if nothing is there."""
    if not exists(qs.uri):
        raise QuerySetError(f"query set {qs.name!r}: {qs.uri} does not exist")
    if qs.format != "auto":
        return qs.format
    lower = qs.uri.lower().rstrip("/")
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".tar"):
        return "webdataset"
    return "webdataset" if list_files(qs.uri, ".tar") else "folder"


def _iter_folder(qs: QuerySetConfig) -> Iterator[QueryImage]:
    for rel in walk_files(qs.uri):
        if not _is_image(rel):
            continue
        parts = rel.split("/")
        label = parts[-2] if len(parts) > 1 else None
        yield QueryImage(rel, label, read_bytes(join(qs.uri, rel)))


def iter_tar_samples(uri: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream a WebDataset tar as (key, {extension: bytes}); files of a sample share the name up to the first dot."""
    current_key, current = None, {}
    with open_input(uri) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            if name.startswith(".") or "." not in name:
                continue
            key = member.name[: len(member.name) - len(name)] + name.split(".", 1)[0]
            ext = name.split(".", 1)[1].lower()
            if key != current_key:
                if current_key is not None:
                    yield current_key, current
                current_key, current = key, {}
            current[ext] = tar.extractfile(member).read()
    if current_key is not None:
        yield current_key, current


def _label_of(sample: dict[str, bytes]) -> str | None:
    for ext in _LABEL_EXTENSIONS:
        if ext in sample:
            return sample[ext].decode("utf-8", "replace").strip() or None
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if isinstance(meta, dict) and meta.get("label") is not None:
            return str(meta["label"])
    return None


def _iter_webdataset(qs: QuerySetConfig) -> Iterator[QueryImage]:
    shards = [qs.uri] if qs.uri.lower().rstrip("/").endswith(".tar") else list_files(qs.uri, ".tar")
    for shard in shards:
        name = basename(shard)
        for key, sample in iter_tar_samples(shard):
            ext = next((e for e in sample if _is_image("." + e)), None)
            if ext is not None:
                yield QueryImage(f"{name}/{key}", _label_of(sample), sample[ext])


def _iter_parquet(qs: QuerySetConfig) -> Iterator[QueryImage]:
    with open_input(qs.uri) as f:
        table = pq.read_table(f)
    if qs.path_column not in table.column_names:
        raise QuerySetError(f"query set {qs.name!r}: {qs.uri} has no column {qs.path_column!r} (has {table.column_names})")
    paths = table.column(qs.path_column).to_pylist()
    labels = (
        table.column(qs.label_column).to_pylist()
        if qs.label_column and qs.label_column in table.column_names
        else [None] * len(paths)
    )
    folder = qs.uri.rstrip("/").rsplit("/", 1)[0] if "/" in qs.uri else "."
    for path, label in zip(paths, labels):
        if not path:
            continue
        uri = path if ("://" in path or path.startswith("/")) else join(folder, path)
        yield QueryImage(str(path), None if label is None else str(label), read_bytes(uri))


def iter_query_images(qs: QuerySetConfig) -> Iterator[QueryImage]:
    """Every image of a query set in a stable order."""
    fmt = resolve_format(qs)
    reader = {"folder": _iter_folder, "webdataset": _iter_webdataset, "parquet": _iter_parquet}[fmt]
    return reader(qs)


def check_query_set(qs: QuerySetConfig) -> str:
    """Fail early, naming the set, if it is missing or holds no image; returns its format."""
    fmt = resolve_format(qs)
    if next(iter(iter_query_images(qs)), None) is None:
        raise QuerySetError(f"query set {qs.name!r}: {qs.uri} holds no images ({fmt})")
    return fmt

"""Plain functions of the embedding stage, mapped over pool shards and query sets by the flow.

Layout written under the embed stage URI:

* ``embeddings-{i:06d}.npy`` (float16, L2-normalised rows) + ``ids-{i:06d}.parquet`` (key, shard)
  for pool shard ``i``;
* ``queries/{name}/embeddings.npy`` + ``queries/{name}/ids.parquet`` (id, label) per query set;
* ``_COMMITTED.json`` with the model id, checksum and dimension.

Each finished shard or query set is marked done, so a rerun after a crash skips it.
"""

from __future__ import annotations

import functools
import io
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.commit import commit_stage, config_digest, mark_part_done, part_done, read_commit
from storage.shards import iter_samples
from storage.tables import SCHEMAS, read_table, write_table
from storage.uri import basename, join, list_files, open_fs, open_input, read_bytes, scheme_of, write_bytes_atomic
from tasks.embed.backbone import Embedder, embedder_from_config
from tasks.embed.config import EmbedConfig
from tasks.embed.loader import embed_items
from tasks.queries.config import QuerySetConfig
from tasks.queries.sets import QuerySetError, iter_query_images, check_query_set
from lvd.errors import LvdError

STAGE = "embed"
_INDEX_RE = re.compile(r"(\d+)\D*$")


class EmbeddingMismatch(LvdError, ValueError):
    """Embeddings that cannot be compared (different models or dimensions)."""


@functools.lru_cache(maxsize=2)
def _cached_embedder(cfg_json: str) -> Embedder:
    return embedder_from_config(EmbedConfig.model_validate_json(cfg_json))


def get_embedder(cfg: EmbedConfig) -> Embedder:
    """The embedder for ``cfg``, loaded once per process (tasks mapped over shards share it)."""
    return _cached_embedder(cfg.model_dump_json())


def shard_index(shard_url: str) -> int:
    """Number in a shard's file name (``pool-000012.tar`` -> 12)."""
    name = basename(shard_url).split(".", 1)[0]
    m = _INDEX_RE.search(name)
    if m is None:
        raise ValueError(f"shard {shard_url!r} has no number in its name; pass index= explicitly")
    return int(m.group(1))


def _npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def _read_npy(uri: str) -> np.ndarray:
    return np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False)


def _identity(embedder: Embedder, cfg: EmbedConfig) -> dict:
    return {**embedder.describe(), "features": cfg.features, "config_digest": config_digest(cfg)}


def _reusable(summary: dict | None, cfg: EmbedConfig) -> bool:
    return summary is not None and summary.get("config_digest") == config_digest(cfg)


def _pool_items(shard_url: str, keep: frozenset[str] | None) -> Iterable[tuple[str, bytes]]:
    for key, fields in iter_samples(shard_url):
        if keep is not None and key not in keep:
            continue
        data = fields.get("jpg") or fields.get("jpeg") or fields.get("png") or fields.get("webp")
        if data is not None:
            yield key, data


def write_pool_shard(stage_uri: str, index: int, keys: list[str], shard_name: str, vectors: np.ndarray) -> None:
    """Write pool shard ``index``'s vectors (stored float16) and ids, the files every reader of the pool reads."""
    if vectors.ndim != 2 or vectors.shape[0] != len(keys):
        raise ValueError(f"pool shard {index}: {vectors.shape} vectors for {len(keys)} keys")
    write_bytes_atomic(join(stage_uri, f"embeddings-{index:06d}.npy"), _npy_bytes(vectors.astype(np.float16)))
    write_table(
        join(stage_uri, f"ids-{index:06d}.parquet"),
        pa.table({"key": pa.array(keys, pa.string()), "shard": pa.array([shard_name] * len(keys), pa.string())}),
        SCHEMAS["embed.ids"],
    )


def embed_shard(
    shard_url: str,
    keys_to_keep: Iterable[str] | None,
    stage_uri: str,
    cfg: EmbedConfig,
    *,
    index: int | None = None,
    embedder: Embedder | None = None,
) -> dict:
    """Embed the kept images of one pool shard; returns a small summary (also stored as the part marker).

    ``keys_to_keep`` None keeps every image of the shard.
    """
    i = shard_index(shard_url) if index is None else int(index)
    part = f"pool-{i:06d}"
    done = part_done(stage_uri, part)
    if _reusable(done, cfg):
        return done
    embedder = embedder or get_embedder(cfg)
    keep = None if keys_to_keep is None else frozenset(keys_to_keep)
    start = time.perf_counter()
    keys, vectors, failed = embed_items(
        embedder, functools.partial(_pool_items, shard_url, keep), cfg.batch_size, cfg.num_workers
    )
    seconds = time.perf_counter() - start
    shard_name = basename(shard_url)
    write_pool_shard(stage_uri, i, keys, shard_name, vectors)
    summary = {
        "part": part,
        "shard": shard_name,
        "index": i,
        "images": len(keys),
        "failed": len(failed),
        "failed_keys": failed[:20],
        "seconds": round(seconds, 3),
        **_identity(embedder, cfg),
    }
    mark_part_done(stage_uri, part, summary)
    return summary


def _query_items(qs: QuerySetConfig) -> Iterable[tuple[str, bytes]]:
    # The label travels inside the loader key, so decoding can run in worker processes.
    for img in iter_query_images(qs):
        yield json.dumps([img.id, img.label]), img.data


def write_query_embeddings(stage_uri: str, name: str, ids: list[str], labels: list[str | None],
                           vectors: np.ndarray) -> None:
    """Write query set ``name``'s vectors (stored float16) and ids under ``queries/{name}/``."""
    if vectors.ndim != 2 or not vectors.shape[0] == len(ids) == len(labels):
        raise ValueError(f"query set {name!r}: {vectors.shape} vectors for {len(ids)} ids and {len(labels)} labels")
    base = join(stage_uri, "queries", name)
    write_bytes_atomic(join(base, "embeddings.npy"), _npy_bytes(vectors.astype(np.float16)))
    write_table(
        join(base, "ids.parquet"),
        pa.table({"id": pa.array(ids, pa.string()), "label": pa.array(labels, pa.string())}),
        SCHEMAS["embed.query_ids"],
    )


def embed_query_set(qs: QuerySetConfig, stage_uri: str, cfg: EmbedConfig, *, embedder: Embedder | None = None) -> dict:
    """Embed one curated query set into ``queries/{name}/``; QuerySetError if it is missing or empty."""
    part = f"queries-{qs.name}"
    done = part_done(stage_uri, part)
    if _reusable(done, cfg) and done.get("uri") == qs.uri:
        return done
    check_query_set(qs)
    embedder = embedder or get_embedder(cfg)
    start = time.perf_counter()
    keys, vectors, failed = embed_items(embedder, functools.partial(_query_items, qs), cfg.batch_size, cfg.num_workers)
    pairs = [json.loads(k) for k in keys]
    ids, labels = [p[0] for p in pairs], {p[0]: p[1] for p in pairs}
    failed = [json.loads(k)[0] for k in failed]
    if not ids:
        raise QuerySetError(f"query set {qs.name!r}: none of its images could be decoded ({len(failed)} failed)")
    write_query_embeddings(stage_uri, qs.name, ids, [labels.get(k) for k in ids], vectors)
    summary = {
        "part": part,
        "name": qs.name,
        "uri": qs.uri,
        "images": len(ids),
        "failed": len(failed),
        "seconds": round(time.perf_counter() - start, 3),
        **_identity(embedder, cfg),
    }
    mark_part_done(stage_uri, part, summary)
    return summary


def finalize_embed(
    stage_uri: str, summaries: list[dict], cfg: EmbedConfig, input_digest: str, query_summaries: list[dict] = ()
) -> dict:
    """Check that every part used the same model, then commit the stage; returns the commit record."""
    if not summaries:
        raise ValueError(f"{stage_uri}: no pool shard was embedded")
    parts = list(summaries) + list(query_summaries)
    ids = {(s["model_id"], s["checksum"], s["dim"]) for s in parts}
    if len(ids) != 1:
        raise EmbeddingMismatch(f"{stage_uri}: parts were embedded by different models: {sorted(ids)}")
    model_id, checksum, dim = ids.pop()
    return commit_stage(
        stage_uri,
        stage=STAGE,
        config_digest=config_digest(cfg),
        input_digest=input_digest,
        counts={
            "images": sum(s["images"] for s in summaries),
            "failed": sum(s["failed"] for s in summaries),
            "shards": len(summaries),
            "query_sets": len(query_summaries),
            "query_images": sum(s["images"] for s in query_summaries),
        },
        extra={
            "model_id": model_id,
            "checksum": checksum,
            "dim": dim,
            "features": cfg.features,
            "query_sets": {s["name"]: s["images"] for s in query_summaries},
        },
        require_parts=[s["part"] for s in parts],
    )


@dataclass
class Embeddings:
    """Vectors (float32, row-normalised) with their ids."""

    vectors: np.ndarray
    keys: list[str]
    shards: list[str] | None = None
    labels: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


@dataclass(frozen=True)
class PoolShard:
    """One pool shard of an embed stage: its files and where its rows sit in the pool's row order."""

    number: str  # the ``{i:06d}`` of embeddings-{i}.npy
    vectors_uri: str
    ids_uri: str
    start: int
    rows: int


def _npy_header(uri: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file, read from its header only."""
    with open_input(uri) as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


def _ids_rows(uri: str) -> int:
    with open_input(uri) as f:
        return pq.ParquetFile(f).metadata.num_rows


class PoolEmbeddings:
    """The pool vectors of an embed stage, read shard by shard and never concatenated.

    Rows are numbered in shard order (the order of ``embeddings-{i}.npy`` names). Local shards are
    memory-mapped, and the map is dropped after each use, so resident memory stays at one shard's
    worth; a remote shard is read whole when used (the last one is kept). Every accessor returns
    float32.
    """

    def __init__(self, stage_uri: str, shards: list[PoolShard], dim: int):
        self.stage_uri = stage_uri
        self.shards = shards
        self.dim = dim
        self._starts = np.array([s.start for s in shards] + [sum(s.rows for s in shards)], np.int64)
        self._cached: tuple[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.dim)

    def shard_vectors(self, shard: PoolShard) -> np.ndarray:
        """The stored (float16) vectors of one shard: a read-only memory map where local."""
        if scheme_of(shard.vectors_uri) == "file":
            return np.load(open_fs(shard.vectors_uri)[1], mmap_mode="r", allow_pickle=False)
        if self._cached is None or self._cached[0] != shard.vectors_uri:
            self._cached = (shard.vectors_uri, _read_npy(shard.vectors_uri))
        return self._cached[1]

    def shard_ids(self, shard: PoolShard) -> pa.Table:
        return read_table(shard.ids_uri)

    def iter_blocks(self, batch_size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 vectors) per shard, or per at most ``batch_size`` rows of a shard."""
        for shard in self.shards:
            if shard.rows == 0:
                continue
            x = self.shard_vectors(shard)
            step = shard.rows if batch_size is None else batch_size
            for s in range(0, shard.rows, step):
                yield shard.start + s, np.asarray(x[s : s + step], np.float32)
            del x

    def _by_shard(self, rows: np.ndarray) -> Iterator[tuple[PoolShard, np.ndarray, np.ndarray]]:
        """(shard, positions in ``rows``, local rows) for every shard that ``rows`` touch."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"{self.stage_uri}: pool rows must lie in [0, {len(self)}), got "
                             f"[{rows.min()}, {rows.max()}]")
        order = np.argsort(rows, kind="stable")
        which = np.searchsorted(self._starts, rows[order], side="right") - 1
        bounds = np.searchsorted(which, np.arange(len(self.shards) + 1))
        for j in np.flatnonzero(np.diff(bounds)):
            pos = order[bounds[j] : bounds[j + 1]]
            yield self.shards[j], pos, rows[pos] - self.shards[j].start

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of pool ``rows`` (any order, repeats allowed), gathered shard by shard."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        out = np.empty((rows.size, self.dim), np.float32)
        for shard, pos, local in self._by_shard(rows):
            x = self.shard_vectors(shard)
            out[pos] = x[local]
            del x
        return out

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            return self.take(np.arange(len(self))[rows])
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {rows.shape} for a pool of {len(self)} rows")
            rows = np.flatnonzero(rows)
        return self.take(rows)

    def ids_at(self, rows: np.ndarray) -> tuple[list[str], list[str]]:
        """(keys, crawl shard names) of pool ``rows``, in the order given."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        keys: list = [None] * rows.size
        names: list = [None] * rows.size
        for shard, pos, local in self._by_shard(rows):
            table = self.shard_ids(shard)
            k, n = table.column("key").to_pylist(), table.column("shard").to_pylist()
            for p, r in zip(pos.tolist(), local.tolist()):
                keys[p], names[p] = k[r], n[r]
        return keys, names


def open_pool_embeddings(stage_uri: str, *, require_commit: bool = True) -> PoolEmbeddings:
    """The pool of a (committed) embed stage; reads only file headers, checking every shard's rows and width."""
    if require_commit:
        read_commit(stage_uri)
    shards, dims, start = [], set(), 0
    for uri in list_files(stage_uri, ".npy"):
        name = basename(uri)
        if not name.startswith("embeddings-"):
            continue
        number = name[len("embeddings-") : -len(".npy")]
        ids_uri = join(stage_uri, f"ids-{number}.parquet")
        shape, dtype = _npy_header(uri)
        rows = _ids_rows(ids_uri)
        if shape[:1] != (rows,) or (rows and len(shape) != 2):
            raise ValueError(f"{uri}: vectors of shape {shape} but {rows} ids")
        if dtype.kind != "f":
            raise ValueError(f"{uri}: vectors are {dtype}, not floating point")
        if rows:
            dims.add(int(shape[1]))
        shards.append(PoolShard(number, uri, ids_uri, start, rows))
        start += rows
    if not shards:
        raise ValueError(f"{stage_uri}: holds no pool embeddings")
    if len(dims) > 1:
        raise EmbeddingMismatch(f"{stage_uri}: pool shards have different widths {sorted(dims)}")
    return PoolEmbeddings(stage_uri, shards, dims.pop() if dims else 0)


def gather(x: "np.ndarray | PoolEmbeddings", rows: np.ndarray) -> np.ndarray:
    """float32 rows of an in-memory array or of a sharded pool."""
    if isinstance(x, PoolEmbeddings):
        return x.take(rows)
    return np.ascontiguousarray(x[np.asarray(rows, np.int64)], np.float32)


def row_blocks(x: "np.ndarray | PoolEmbeddings", batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 block of at most ``batch_size`` rows) over an array or a sharded pool (per shard)."""
    if isinstance(x, PoolEmbeddings):
        yield from x.iter_blocks(batch_size)
        return
    for s in range(0, x.shape[0], batch_size):
        yield s, np.ascontiguousarray(x[s : s + batch_size], np.float32)


def load_query_embeddings(stage_uri: str, name: str) -> Embeddings:
    """Embeddings of query set ``name``; QuerySetError naming the set if it was never embedded."""
    base = join(stage_uri, "queries", name)
    try:
        x = _read_npy(join(base, "embeddings.npy"))
        table = read_table(join(base, "ids.parquet"))
    except FileNotFoundError:
        raise QuerySetError(f"query set {name!r} has no embeddings in {stage_uri}; embed it first") from None
    if x.shape[0] == 0:
        raise QuerySetError(f"query set {name!r} is empty")
    return Embeddings(x.astype(np.float32), table.column("id").to_pylist(), labels=table.column("label").to_pylist())

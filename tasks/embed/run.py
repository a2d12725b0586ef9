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
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from storage.commit import commit_stage, config_digest, mark_part_done, part_done, read_commit
from storage.shards import iter_samples
from storage.tables import SCHEMAS, read_table, write_table
from storage.uri import basename, join, list_files, read_bytes, write_bytes_atomic
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


def load_pool_embeddings(stage_uri: str, *, require_commit: bool = True) -> Embeddings:
    """All pool embeddings of a (committed) embed stage, in shard order."""
    if require_commit:
        read_commit(stage_uri)
    arrays, keys, shards = [], [], []
    for uri in list_files(stage_uri, ".npy"):
        name = basename(uri)
        if not name.startswith("embeddings-"):
            continue
        i = name[len("embeddings-") : -len(".npy")]
        x = _read_npy(uri)
        table = read_table(join(stage_uri, f"ids-{i}.parquet"))
        if table.num_rows != x.shape[0]:
            raise ValueError(f"{uri}: {x.shape[0]} vectors but {table.num_rows} ids")
        arrays.append(x)
        keys.extend(table.column("key").to_pylist())
        shards.extend(table.column("shard").to_pylist())
    if not arrays:
        raise ValueError(f"{stage_uri}: holds no pool embeddings")
    return Embeddings(np.concatenate(arrays).astype(np.float32), keys, shards)


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

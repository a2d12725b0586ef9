"""Write the curated dataset: selected pool images and as-is query images, shuffled into WebDataset shards.

The shuffle is a two-pass scatter/gather: every sample goes to a random local bucket while the
pool shards are read once in order, then each bucket is shuffled in memory and streamed into the
output shards, which roll over at a sample or byte limit. Random buckets plus a random order
inside each give a uniform permutation without holding the dataset in memory. Every finished
shard is marked done; a rerun walks the same deterministic stream and rewrites only the rest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections import defaultdict

import numpy as np

from storage.commit import (
    begin_stage,
    commit_stage,
    config_digest,
    digest_of_commit,
    is_committed,
    mark_part_done,
    part_done,
    read_commit,
)
from storage.shards import ShardInfo, ShardWriter, iter_samples, manifest_shards, write_manifest
from storage.tables import SCHEMAS, read_table, write_table
from storage.uri import join
from tasks.queries.config import QuerySetConfig
from tasks.queries.sets import QuerySetError, iter_query_images
from tasks.retrieve.layout import read_dataset_stats, read_selection
from tasks.shard.config import ShardConfig
from lvd.errors import LvdError

STAGE = "shards"
_PROVENANCE = ("source", "query_dataset", "query_id", "query_label", "key", "shard", "similarity", "rule", "cluster")


class MissingSample(LvdError, RuntimeError):
    """The selection names an image its source no longer holds."""


_TAR_BLOCK = 512
_TAR_END = 2 * _TAR_BLOCK


def _tar_member_size(n: int) -> int:
    """Bytes one member of ``n`` bytes takes in the tar: a header block plus the padded data."""
    return _TAR_BLOCK + -(-n // _TAR_BLOCK) * _TAR_BLOCK


def _bucket_count(n: int, cfg: ShardConfig) -> int:
    return max(1, min(cfg.max_buckets, math.ceil(n / cfg.bucket_samples)))


def _crawl_meta(fields: dict[str, bytes]) -> dict:
    try:
        meta = json.loads(fields.get("json", b"{}"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _scatter(rows: list[dict], pool_stage_uri: str, query_sets: dict[str, QuerySetConfig], buckets: np.ndarray,
             tmp: str) -> None:
    """Read every selected image once and append it, with its provenance, to its bucket."""
    writers: dict[int, ShardWriter] = {}

    def put(row_i: int, image: bytes, crawl: dict) -> None:
        b = int(buckets[row_i])
        if b not in writers:
            writers[b] = ShardWriter(os.path.join(tmp, f"bucket-{b:05d}.tar"))
        writers[b].write(f"r{row_i}", {"jpg": image, "json": {"row": row_i, "crawl": crawl}})

    by_shard: dict[str, dict[str, int]] = defaultdict(dict)
    by_query: dict[str, dict[str, int]] = defaultdict(dict)
    for i, row in enumerate(rows):
        if row["source"] == "pool":
            by_shard[row["shard"]][row["key"]] = i
        else:
            by_query[row["query_dataset"]][row["query_id"]] = i
    try:
        for shard in sorted(by_shard):
            wanted = by_shard[shard]
            found = 0
            for key, fields in iter_samples(join(pool_stage_uri, shard)):
                i = wanted.get(key)
                if i is None:
                    continue
                image = fields.get("jpg") or fields.get("jpeg") or fields.get("png") or fields.get("webp")
                if image is None:
                    raise MissingSample(f"{shard}: sample {key} has no image")
                put(i, image, _crawl_meta(fields))
                found += 1
            if found != len(wanted):
                raise MissingSample(f"{shard}: {len(wanted) - found} selected images are not in the pool shard")
        for name in sorted(by_query):
            wanted = by_query[name]
            found = 0
            for img in iter_query_images(query_sets[name]):
                i = wanted.get(img.id)
                if i is not None:
                    put(i, img.data, {})
                    found += 1
            if found != len(wanted):
                raise MissingSample(f"query set {name!r}: {len(wanted) - found} selected images are gone")
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise


def _record(row: dict, crawl: dict, image: bytes) -> dict:
    rec = {k: row[k] for k in _PROVENANCE}
    rec["pool_key"], rec["pool_shard"] = rec.pop("key"), rec.pop("shard")
    rec["url"] = crawl.get("url")
    rec["page"] = crawl.get("page")
    rec["sha256"] = hashlib.sha256(image).hexdigest()
    return rec


def write_curated_shards(
    retrieve_stage_uri: str,
    pool_stage_uri: str,
    stage_uri: str,
    cfg: ShardConfig,
    query_sets: list[QuerySetConfig] = (),
    previous: str | None = None,
) -> dict:
    """Write (or skip, if committed with this config and input) the curated shards; returns the commit.

    ``pool_stage_uri`` is the crawl stage holding the pool shards; ``query_sets`` must include every
    set whose images join as-is. In a refresh, ``previous`` is the earlier version's shards stage: its
    manifest rows are carried over unchanged (their URLs stay in that immutable version) and the new
    selection goes into new shards numbered after them, so keys stay unique across versions.
    """
    input_digest = digest_of_commit(retrieve_stage_uri)
    if previous is not None:
        input_digest = config_digest({"retrieve": input_digest, "previous": digest_of_commit(previous)})
    digest = config_digest({"shard": cfg.model_dump(mode="json"), "as_is_sources": {q.name: q.uri for q in query_sets}})
    if is_committed(stage_uri):  # same digests: skip; other digests: StageConflict
        return begin_stage(stage_uri, stage=STAGE, config_digest=digest, input_digest=input_digest, config=cfg).commit
    carried = manifest_shards(previous) if previous is not None else []
    first = int(read_commit(previous).get("extra", {}).get("next_shard", len(carried))) if previous else 0
    rows = read_selection(retrieve_stage_uri).to_pylist()
    if not rows and previous is None:
        raise ValueError(f"{retrieve_stage_uri}: the selection is empty, nothing to shard")
    sets = {q.name: q for q in query_sets}
    missing = sorted({r["query_dataset"] for r in rows if r["source"] == "query"} - set(sets))
    if missing:
        raise QuerySetError(f"the selection holds as-is images of {missing}; pass their QuerySetConfig")
    # Parts left by a run with other settings are discarded here, never mixed into this one.
    begin_stage(stage_uri, stage=STAGE, config_digest=digest, input_digest=input_digest, config=cfg)
    n = len(rows)
    rng = np.random.default_rng(cfg.seed)
    nb = _bucket_count(n, cfg) if cfg.shuffle else 1
    buckets = rng.integers(0, nb, size=n) if cfg.shuffle else np.zeros(n, np.int64)
    infos: list[ShardInfo] = []
    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lvd-scatter-", dir=os.environ.get("LVD_SPOOL_DIR")) as tmp:
        _scatter(rows, pool_stage_uri, sets, buckets, tmp)
        state = {"shard": first, "writer": None, "pending": []}

        def close_current() -> None:
            writer, number = state["writer"], state["shard"]
            part = f"{cfg.prefix}-{number:06d}"
            if writer is not None:
                info = writer.close()
                mark_part_done(stage_uri, part, {"url": info.url, "nsamples": info.nsamples, "nbytes": info.nbytes,
                                                 "sha256": info.sha256, "md5": info.md5})
            else:
                info = ShardInfo(**part_done(stage_uri, part))
            infos.append(info)
            samples.extend(state["pending"])
            state.update(shard=number + 1, writer=None, pending=[], count=0, nbytes=0)

        state.update(count=0, nbytes=0)
        for b in range(nb):
            path = os.path.join(tmp, f"bucket-{b:05d}.tar")
            if not os.path.exists(path):
                continue
            items = list(iter_samples(path))
            order = rng.permutation(len(items)) if cfg.shuffle else np.argsort([json.loads(f["json"])["row"] for _, f in items])
            for j in order:
                _, fields = items[j]
                meta = json.loads(fields["json"])
                row = rows[meta["row"]]
                rec = _record(row, meta["crawl"], fields["jpg"])
                body = json.dumps({**rec, "crawl": meta["crawl"]}, sort_keys=True, ensure_ascii=False).encode()
                size = _tar_member_size(len(fields["jpg"])) + _tar_member_size(len(body))
                if state["count"] and state["nbytes"] + size + _TAR_END > cfg.max_shard_bytes:
                    close_current()
                number = state["shard"]
                key = f"{number:06d}_{state['count']:06d}"
                part = f"{cfg.prefix}-{number:06d}"
                if state["count"] == 0 and part_done(stage_uri, part) is None:
                    state["writer"] = ShardWriter(join(stage_uri, f"{part}.tar"))
                if state["writer"] is not None:
                    state["writer"].write(key, {"jpg": fields["jpg"], "json": body})
                state["pending"].append({"key": key, "shard": f"{part}.tar", **{k: rec[k] for k in
                                        ("source", "query_dataset", "query_id", "rule", "pool_key", "pool_shard",
                                         "similarity", "cluster", "url", "sha256")}})
                state["count"] += 1
                state["nbytes"] += size
                if state["count"] >= cfg.samples_per_shard:
                    close_current()
            del items
        if state["count"]:
            close_current()
    write_manifest(stage_uri, carried + infos)
    write_table(join(stage_uri, "samples.parquet"), samples, SCHEMAS["shards.samples"])
    composition = _composition_rows(retrieve_stage_uri, samples)
    write_table(join(stage_uri, "composition.parquet"), composition, SCHEMAS["shards.composition"])
    every = carried + infos
    return commit_stage(
        stage_uri,
        stage=STAGE,
        config_digest=digest,
        input_digest=input_digest,
        counts={"samples": int(sum(i.nsamples for i in every)), "shards": len(every),
                "bytes": int(sum(i.nbytes for i in every)), "added_samples": len(samples),
                "added_shards": len(infos), "added_bytes": int(sum(i.nbytes for i in infos)),
                "reused_shards": len(carried)},
        extra={"composition": composition, "next_shard": first + len(infos), "previous": previous},
        require_parts=[f"{cfg.prefix}-{i:06d}" for i in range(first, first + len(infos))],
    )


def _composition_rows(retrieve_stage_uri: str, samples: list[dict]) -> list[dict]:
    stats = read_dataset_stats(retrieve_stage_uri)
    final: dict[tuple[str, str], int] = defaultdict(int)
    for s in samples:
        final[(s["query_dataset"] or "", s["rule"])] += 1
    rows = []
    for st in stats:
        ds = st["dataset"] or ""
        rows.append({"dataset": ds or "(balanced)", "rule": st["rule"], "queries": st["queries"],
                     "candidates": st["candidates"], "collisions": st["collisions"], "capped": st["capped"],
                     "final": final.pop((ds, st["rule"]), 0)})
    for (ds, rule), count in sorted(final.items()):
        rows.append({"dataset": ds or "(balanced)", "rule": rule, "queries": 0, "candidates": 0, "collisions": 0,
                     "capped": 0, "final": count})
    return rows


def composition_table(stage_uri: str) -> list[dict]:
    """Per source (query set and rule): queries, candidates, collisions, capped, final images (cf. DINOv2 Table 15)."""
    read_commit(stage_uri)
    return read_table(join(stage_uri, "composition.parquet"), schema=SCHEMAS["shards.composition"]).to_pylist()

"""The safety stage of curate-lvd: NSFW removal and face blurring, between crawl and dedup.

It sits before dedup because blurring changes pixels: dedup hashes and the embeddings used for
retrieval must be computed on the images as stored and published (blurred), not on originals
that no longer exist downstream. Removing NSFW images first also spares dedup and embedding
the work on images that would be dropped anyway.

Entry points for the flow, mirroring the crawl stage: :func:`plan_safety_parts` (checks the crawl
commit and probes every model before any work), :func:`safety_part` (one crawl shard in, one
safety shard and its decisions out; idempotent), :func:`finalize_safety` (decisions.parquet,
manifest, commit). Output under ``{root}/{dataset}/{version}/safety/``: ``pool-*.tar`` with the
kept images (faces blurred, ``safety`` block added to each JSON), ``decisions.parquet`` with one
row per crawl image, ``manifest.parquet`` and ``_COMMITTED.json``. No Prefect here.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import asdict

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from storage.commit import commit_stage, config_digest, digest_of_commit, mark_part_done, part_done, read_commit
from storage.shards import ShardInfo, ShardWriter, iter_samples, manifest_shards, write_manifest
from storage.tables import read_table, write_table
from storage.uri import basename, join
from tasks.safety.config import SafetyConfig
from tasks.safety.decisions import DECISIONS_SCHEMA, decision_row
from tasks.safety.pool import BatchRunner
from tasks.safety.process import REASON_NSFW, REASON_UNDECODABLE, STEPS, check_models, resolve_models

STAGE = "safety"
DECISIONS_FILE = "decisions.parquet"
PART_DECISIONS_DIR = "decisions"


class SafetyPart(BaseModel):
    """One crawl shard to screen; its name is the shard's file name, which the output shard keeps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0, description="Position in the plan.")
    shard: str = Field(min_length=1, description="URI of the crawl shard.")
    sha256: str = Field(min_length=64, max_length=64, description="The crawl manifest's sha256 of the shard.")
    nsamples: int = Field(ge=0, description="Samples the crawl manifest lists for the shard.")

    @property
    def name(self) -> str:
        name = basename(self.shard)
        return name[:-4] if name.endswith(".tar") else name


def _as_part(part: SafetyPart | dict) -> SafetyPart:
    return part if isinstance(part, SafetyPart) else SafetyPart.model_validate(part)


def plan_safety_parts(crawl_stage_uri: str, cfg: SafetyConfig) -> list[SafetyPart]:
    """One part per committed crawl shard, after every enabled model has loaded and answered a probe.

    Raises StageNotCommitted for an uncommitted crawl and SafetyModelError for a model that is
    missing, unreadable or does not fit its configured input.
    """
    read_commit(crawl_stage_uri)
    check_models(cfg)
    return [SafetyPart(index=i, shard=s.url, sha256=s.sha256, nsamples=s.nsamples)
            for i, s in enumerate(manifest_shards(crawl_stage_uri))]


def safety_input_digest(crawl_stage_uri: str, cfg: SafetyConfig) -> str:
    """The crawl commit plus the content digests of the models: a model swapped at the same URI is new input."""
    return config_digest({"crawl": digest_of_commit(crawl_stage_uri), "models": resolve_models(cfg).identity()})


def part_decisions_uri(stage_uri: str, part: SafetyPart) -> str:
    return join(stage_uri, PART_DECISIONS_DIR, f"part-{part.name}.parquet")


def _updated_meta(raw: bytes | None, result, cfg: SafetyConfig, nbytes: int) -> dict:
    try:
        meta = json.loads(raw) if raw is not None else {}
    except (ValueError, UnicodeDecodeError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    meta["bytes"] = nbytes
    meta["safety"] = {
        "nsfw_score": result.nsfw_score,
        "nsfw_threshold": cfg.nsfw.threshold if cfg.nsfw.enabled else None,
        "n_faces": None if result.boxes is None else len(result.boxes),
        "face_boxes": None if result.boxes is None else [list(map(int, b)) for b in result.boxes],
        "blurred": result.jpg is not None,
    }
    return meta


def safety_part(part: SafetyPart | dict, stage_uri: str, cfg: SafetyConfig) -> dict:
    """Screen one crawl shard into ``safety/{name}.tar`` and its decisions; returns (and stores) a summary.

    Idempotent: a part already marked done returns its stored summary.
    """
    part = _as_part(part)
    done = part_done(stage_uri, part.name)
    if done is not None:
        return done
    started = time.monotonic()
    models = resolve_models(cfg)
    out_uri = join(stage_uri, f"{part.name}.tar")
    rows: list[dict] = []
    seconds = dict.fromkeys(STEPS, 0.0)
    waiting: deque[list[tuple[str, dict]]] = deque()  # samples of batches sent out, in order

    def batches():
        batch: list[tuple[str, dict]] = []
        for key, fields in iter_samples(part.shard, expected_sha256=part.sha256):
            batch.append((key, fields))
            if len(batch) >= cfg.batch_size:
                waiting.append(batch)
                yield [(k, f.get("jpg", b"")) for k, f in batch]
                batch = []
        if batch:
            waiting.append(batch)
            yield [(k, f.get("jpg", b"")) for k, f in batch]

    writer = ShardWriter(out_uri)
    try:
        with BatchRunner(cfg, models) as runner:
            for result_batch in runner.imap(batches()):
                samples = waiting.popleft()
                for step, s in result_batch.seconds.items():
                    seconds[step] += s
                for (key, fields), res in zip(samples, result_batch.results, strict=True):
                    if res.removed:
                        if res.reason == REASON_UNDECODABLE and "jpg" not in fields:
                            res.error = "sample has no jpg member"
                        rows.append(decision_row(key, part.shard, None, res))
                        continue
                    jpg = res.jpg if res.jpg is not None else fields["jpg"]
                    out = {ext: data for ext, data in fields.items() if ext not in ("jpg", "json")}
                    out["jpg"] = jpg
                    out["json"] = _updated_meta(fields.get("json"), res, cfg, len(jpg))
                    writer.write(key, out)
                    rows.append(decision_row(key, part.shard, out_uri, res))
        if writer.nsamples:
            shards = [writer.close()]
        else:
            writer.abort()
            shards = []
    except BaseException:
        writer.abort()
        raise
    if len(rows) != part.nsamples:
        raise RuntimeError(f"{part.shard}: read {len(rows)} samples, the crawl manifest lists {part.nsamples}")
    decisions_uri = part_decisions_uri(stage_uri, part)
    write_table(decisions_uri, rows, DECISIONS_SCHEMA)
    summary = {
        "part": part.name,
        "shard": part.shard,
        "decisions": decisions_uri,
        "shards": [asdict(s) for s in shards],
        "samples": len(rows),
        "kept": sum(not r["removed"] for r in rows),
        "removed_nsfw": sum(r["reason"] == REASON_NSFW for r in rows),
        "removed_undecodable": sum(r["reason"] == REASON_UNDECODABLE for r in rows),
        "blurred": sum(r["blurred"] for r in rows),
        "faces": sum(r["n_faces"] or 0 for r in rows),
        "step_seconds": {k: round(v, 3) for k, v in seconds.items()},
        "seconds": round(time.monotonic() - started, 3),
    }
    mark_part_done(stage_uri, part.name, summary)
    return summary


def finalize_safety(stage_uri: str, parts: list[SafetyPart | dict], cfg: SafetyConfig, input_digest: str) -> dict:
    """Merge the parts' decisions into decisions.parquet, write the manifest of kept shards, commit."""
    parts = [_as_part(p) for p in parts]
    summaries, missing = [], []
    for part in parts:
        s = part_done(stage_uri, part.name)
        (missing.append(part.name) if s is None else summaries.append(s))
    if missing:
        raise RuntimeError(f"cannot finalize {stage_uri}: parts {missing[:10]} are not done")
    tables = [read_table(s["decisions"], schema=DECISIONS_SCHEMA) for s in summaries]
    merged = pa.concat_tables(tables) if tables else DECISIONS_SCHEMA.empty_table()
    expected = sum(p.nsamples for p in parts)
    if merged.num_rows != expected:
        raise RuntimeError(f"{stage_uri}: {merged.num_rows} decisions for {expected} crawl samples")
    write_table(join(stage_uri, DECISIONS_FILE), merged, DECISIONS_SCHEMA)
    shards = [ShardInfo(**info) for s in summaries for info in s["shards"]]
    counts = {
        "parts": len(summaries),
        "samples": expected,
        "kept": sum(s["kept"] for s in summaries),
        "removed": expected - sum(s["kept"] for s in summaries),
        "removed_nsfw": sum(s["removed_nsfw"] for s in summaries),
        "removed_undecodable": sum(s["removed_undecodable"] for s in summaries),
        "blurred": sum(s["blurred"] for s in summaries),
        "faces": sum(s["faces"] for s in summaries),
        "shards": len(shards),
    }
    if not shards:
        raise RuntimeError(
            f"safety screening of {stage_uri} kept no image of {expected} ({counts['removed_nsfw']} nsfw, "
            f"{counts['removed_undecodable']} undecodable); see {join(stage_uri, DECISIONS_FILE)}"
        )
    write_manifest(stage_uri, shards)
    step_seconds = {k: round(sum(s["step_seconds"].get(k, 0.0) for s in summaries), 3) for k in STEPS}
    return commit_stage(
        stage_uri, stage=STAGE, config_digest=config_digest(cfg), input_digest=input_digest, counts=counts,
        extra={"models": resolve_models(cfg).identity()},
        timings={"step_seconds": step_seconds},  # out of the digest: they differ run to run
        require_parts=[p.name for p in parts],
    )

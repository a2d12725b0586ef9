"""Which version a curate-lvd run builds on, and what it has left to crawl: decided before any stage runs.

A full build crawls every input. A refresh (``refresh.from_version``) builds on a fully committed
earlier version made with the same embedder, query sets and duplicate detectors, crawls only the
inputs no ancestor consumed, and numbers its crawl parts after the parent's so sample keys and
shard names never repeat within a dataset. A rerun of a version whose ``inputs`` stage already
committed keeps the parent and inputs it started with, so an interrupted refresh resumes as it was.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from flows.config import CurateConfig
from storage.commit import (
    CONFIG_FILE,
    LATEST_FILE,
    StageNotCommitted,
    begin_stage,
    config_digest,
    is_committed,
    read_commit,
    read_latest,
    stage_uri,
)
from storage.uri import join, read_bytes
from storage.versions import (
    CORE_STAGES,
    INPUTS_STAGE,
    NoNewInputs,
    RefreshRefused,
    commit_inputs,
    input_fingerprint,
    missing_stages,
    new_inputs,
    read_inputs,
    require_complete,
)
from tasks.crawl.stage import CrawlPart, plan_crawl_parts
from tasks.crawl.sources import expand_inputs

EMBEDDER_FIELDS = ("backbone", "features", "image_size", "resize_ratio")
DETECTOR_FIELDS = ("exact", "hash_method", "hash_bits", "copy_model", "copy_resize")


@dataclass
class VersionPlan:
    """The version a run writes, its parent (None for a full build) and the crawl parts still to do."""

    version: str
    parent: str | None
    ancestors: list[str] = field(default_factory=list)
    consumed: list[dict] = field(default_factory=list)
    new: list[dict] = field(default_factory=list)
    first_part: int = 0
    parts: list[CrawlPart] = field(default_factory=list)

    @property
    def next_part(self) -> int:
        return self.first_part + len(self.parts)

    def lineage(self) -> dict:
        return {"parent": self.parent, "ancestors": self.ancestors, "first_part": self.first_part,
                "next_part": self.next_part}


def previous_stage(cfg: CurateConfig, plan: VersionPlan, stage: str) -> str | None:
    """The parent's committed ``stage`` that a refresh builds on; None in a full build."""
    return None if plan.parent is None else stage_uri(cfg.storage.root, cfg.dataset, plan.parent, stage)


def _stage_config(cfg: CurateConfig, version: str, stage: str) -> dict:
    try:
        return json.loads(read_bytes(join(stage_uri(cfg.storage.root, cfg.dataset, version, stage), CONFIG_FILE)))
    except FileNotFoundError:
        raise RefreshRefused(f"refresh from {version!r}: its {stage} stage has no config.json to compare with") from None


def _pick(settings: dict, names: tuple[str, ...]) -> dict:
    return {k: settings.get(k) for k in names}


def check_compatible(cfg: CurateConfig, parent: str) -> None:
    """Refuse a parent whose embeddings, query sets or duplicate detectors this run could not extend."""
    old = _pick(_stage_config(cfg, parent, "embed"), EMBEDDER_FIELDS)
    new = _pick(cfg.embed.model_dump(mode="json"), EMBEDDER_FIELDS)
    if old != new:
        raise RefreshRefused(
            f"refresh.from_version: {parent!r} was embedded with {old} (digest {config_digest(old)[:12]}), this "
            f"run with {new} (digest {config_digest(new)[:12]}); a refresh must use the same embedder, so build "
            "a full version (refresh.from_version empty) instead")
    old_q = _stage_config(cfg, parent, "retrieve").get("queries", [])
    new_q = [q.model_dump(mode="json") for q in cfg.retrieve.queries]
    if old_q != new_q:
        raise RefreshRefused(
            f"refresh.from_version: {parent!r} was retrieved with query sets {old_q}, this run has {new_q}; a "
            "refresh must keep the same query sets")
    old_d = _pick(_stage_config(cfg, parent, "dedup"), DETECTOR_FIELDS)
    new_d = _pick(cfg.dedup.model_dump(mode="json"), DETECTOR_FIELDS)
    if old_d != new_d:
        raise RefreshRefused(
            f"refresh.from_version: {parent!r} was deduplicated with {old_d}, this run with {new_d}; its "
            "persisted hashes and descriptors only compare with the same detectors")
    if cfg.retrieve.strategy != "retrieval":
        raise RefreshRefused(f"retrieve.strategy {cfg.retrieve.strategy!r}: a refresh supports only 'retrieval'")


def resolve_parent(cfg: CurateConfig) -> str | None:
    """The committed version to refresh from, or None for a full build (``if_missing: full``)."""
    ref = cfg.refresh.from_version
    if ref is None:
        return None
    root, dataset = cfg.storage.root, cfg.dataset
    if ref == LATEST_FILE:
        try:
            name = read_latest(root, dataset)
        except StageNotCommitted as err:
            name, why = None, str(err)
    else:
        name = ref
        why = f"dataset {dataset!r} under {root} has no version {ref!r}"
        if len(missing_stages(root, dataset, ref)) == len(CORE_STAGES):
            name = None
    if name is None:
        if cfg.refresh.if_missing == "full":
            return None
        raise RefreshRefused(f"refresh.from_version={ref!r}: {why}; set refresh.if_missing=full to build "
                             "the first version from every input")
    if name == cfg.version:
        raise RefreshRefused(f"refresh.from_version={ref!r} names version {name!r}, the one this run writes")
    require_complete(root, dataset, name)
    return name


def plan_version(cfg: CurateConfig) -> VersionPlan:
    """Parent, consumed and new inputs, and crawl parts of the run; every refusal happens here."""
    root, dataset, version = cfg.storage.root, cfg.dataset, cfg.version
    own = stage_uri(root, dataset, version, INPUTS_STAGE)
    if is_committed(own):
        lineage = read_commit(own).get("extra", {})
        rows = read_inputs(own)
        plan = VersionPlan(version, lineage.get("parent"), list(lineage.get("ancestors") or []),
                           [r for r in rows if r["version"] != version], [r for r in rows if r["version"] == version],
                           int(lineage.get("first_part") or 0))
    else:
        parent = resolve_parent(cfg)
        plan = VersionPlan(version, parent)
        candidates = [input_fingerprint(uri) for uri, _ in expand_inputs(cfg.inputs)]
        if parent is not None:
            check_compatible(cfg, parent)
            earlier = stage_uri(root, dataset, parent, INPUTS_STAGE)
            parent_lineage = read_commit(earlier).get("extra", {})
            plan.ancestors = [*(parent_lineage.get("ancestors") or []), parent]
            plan.consumed = read_inputs(earlier)
            plan.first_part = int(parent_lineage.get("next_part") or 0)
        plan.new = new_inputs(candidates, plan.consumed)
        if not plan.new:
            consumers = sorted({r["version"] for r in plan.consumed})
            raise NoNewInputs(
                f"refresh of {dataset!r} from {parent!r}: all {len(candidates)} inputs were already consumed by "
                f"{', '.join(consumers)}; nothing new to curate, `latest` stays on {parent!r}")
    parts = plan_crawl_parts([r["uri"] for r in plan.new], cfg.crawl)
    plan.parts = [p.model_copy(update={"index": plan.first_part + p.index}) for p in parts]
    return plan


def _identity(row: dict) -> dict:
    return {k: row[k] for k in ("uri", "size", "fingerprint")}


def commit_version_inputs(cfg: CurateConfig, plan: VersionPlan) -> tuple[str, dict]:
    """The version's ``inputs`` stage: consumed inputs carried forward plus the new ones, and its lineage."""
    out = stage_uri(cfg.storage.root, cfg.dataset, plan.version, INPUTS_STAGE)
    cfg_digest = config_digest({"lineage": plan.lineage()})
    input_digest = config_digest({"new": [_identity(r) for r in plan.new],
                                  "consumed": [_identity(r) for r in plan.consumed]})
    started = begin_stage(out, stage=INPUTS_STAGE, config_digest=cfg_digest, input_digest=input_digest,
                          config={"lineage": plan.lineage()})
    if started.skip:
        return out, started.commit
    return out, commit_inputs(out, version=plan.version, consumed=plan.consumed, new=plan.new,
                              lineage=plan.lineage(), config_digest=cfg_digest, input_digest=input_digest)

"""curate-lvd: crawl -> dedup -> embed -> retrieve -> shards, each stage committed under one version.

Thin orchestration: every stage is `flows.stages.run_stage` over plain functions from tasks/.
"""
from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger

from flows.config import CurateConfig, PipelineConfig
from flows.reporting import publish_stage_summary
from flows.stages import run_stage, use_storage
from lvd.config import load_config
from storage import uri as storage_uri
from storage.commit import config_digest, stage_uri
from tasks.crawl import stage as crawl


def crawl_input_digest(parts: list) -> str:
    """Identity of the crawl inputs: the planned parts and the sizes of their files."""
    files = sorted({u for p in parts for u in p.uris})
    return config_digest({"plan": crawl.crawl_input_digest(parts),
                          "sizes": {u: storage_uri.file_size(u) for u in files}})


def run_crawl(cfg: CurateConfig) -> tuple[str, dict]:
    out = stage_uri(cfg.storage.root, cfg.dataset, cfg.version, "crawl")
    if not cfg.inputs:
        raise ValueError("curate-lvd needs at least one crawl input (inputs: WARC, HTML or URL-list files)")
    parts = crawl.plan_crawl_parts(cfg.inputs, cfg.crawl)
    digest = crawl_input_digest(parts)
    commit = run_stage(
        stage="crawl",
        stage_uri=out,
        config=cfg.crawl,
        input_digest=digest,
        parts=parts,
        run_part=lambda part: crawl.crawl_part(part, out, cfg.crawl),
        finalize=lambda summaries: crawl.finalize_crawl(out, parts, cfg.crawl, digest),
        part_label=lambda part: part.name,
    )
    return out, commit


def resolve_version(version: str) -> str:
    """`auto` names the version after the run's scheduled start, so retries of one run agree."""
    if version != "auto":
        return version
    from prefect.runtime import flow_run

    start = flow_run.scheduled_start_time
    return start.strftime("%Y%m%d-%H%M") if start else datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")


@flow(name="curate-lvd", log_prints=True)
def curate_lvd(cfg: CurateConfig) -> dict:
    """Curate a dataset version from crawl inputs; returns the committed stage URIs and counts."""
    logger = get_run_logger()
    cfg = cfg.model_copy(update={"version": resolve_version(cfg.version)})
    use_storage(cfg.storage)
    stages: dict[str, dict] = {}
    crawl_uri, crawl_commit = run_crawl(cfg)
    stages["crawl"] = {"uri": crawl_uri, "counts": crawl_commit.get("counts", {})}
    publish_stage_summary("curate-lvd", cfg.dataset, cfg.version, stages)
    logger.info("curate-lvd finished: %s", {k: v["counts"] for k, v in stages.items()})
    return {"dataset": cfg.dataset, "version": cfg.version, "stages": stages}


def run_from_cli(config: str, overrides: list[str]) -> dict:
    cfg = load_config(PipelineConfig, config, overrides).curate()
    return curate_lvd(cfg)

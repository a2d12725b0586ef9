"""curate-lvd: crawl -> dedup -> embed -> retrieve -> shards, each stage committed under one version.

Thin orchestration: every stage is `flows.stages.run_stage` over plain functions from tasks/.
"""
from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger

from flows.config import CurateConfig, PipelineConfig
from flows.refresh import commit_version_inputs, plan_version, previous_stage
from flows.runner import use_task_runner
from flows.reporting import publish_curation_report, publish_stage_summary
from flows.parameters import resolve_cfg
from flows.stages import map_parts, prefect_task, run_stage
from lvd.config import load_config
from storage import uri as storage_uri
from storage.commit import config_digest, digest_of_commit, publish_latest, read_commit, stage_uri
from storage.shards import manifest_shards, shard_name
from storage.uri import basename
from tasks.crawl import stage as crawl
from tasks.crawl.shared_limits import prepare_crawl_limits
from tasks.dedup import stage as dedup
from tasks.dedup.embedder import load_copy_embedder
from tasks.dedup.layout import kept_keys_by_shard
from tasks.embed import run as embed
from tasks.retrieve.run import run_retrieve
from tasks.safety import stage as safety
from tasks.shard.write import write_curated_shards



def crawl_input_digest(parts: list) -> str:
    """Identity of the crawl inputs: the planned parts and the sizes of their files."""
    files = sorted({u for p in parts for u in p.uris})
    return config_digest({"plan": crawl.crawl_input_digest(parts),
                          "sizes": {u: storage_uri.file_size(u) for u in files}})


def run_crawl(cfg: CurateConfig, parts: list[crawl.CrawlPart]) -> tuple[str, dict]:
    """Crawl the planned parts (in a refresh: the new inputs only, numbered after the parent's)."""
    out = stage_uri(cfg.storage.root, cfg.dataset, cfg.version, "crawl")
    digest = crawl_input_digest(parts)
    commit = run_stage(
        stage="crawl",
        stage_uri=out,
        config=cfg.crawl,
        input_digest=digest,
        parts=parts,
        run_part=lambda part: crawl.crawl_part_within_limits(part, out, cfg.crawl),
        finalize=lambda summaries: crawl.finalize_crawl(out, parts, cfg.crawl, digest),
        part_label=lambda part: part.name,
    )
    return out, commit


def safety_enabled(cfg: CurateConfig) -> bool:
    return cfg.safety.nsfw.enabled or cfg.safety.faces.enabled


def run_safety(cfg: CurateConfig, crawl_uri: str) -> tuple[str, dict]:
    """NSFW removal and face blurring per crawl shard; later stages read its (blurred) pool."""
    out = stage_uri(cfg.storage.root, cfg.dataset, cfg.version, "safety")
    parts = safety.plan_safety_parts(crawl_uri, cfg.safety)
    digest = safety.safety_input_digest(crawl_uri, cfg.safety)
    commit = run_stage(
        stage="safety", stage_uri=out, config=cfg.safety, input_digest=digest, parts=parts,
        run_part=lambda part: safety.safety_part(part, out, cfg.safety),
        finalize=lambda summaries: safety.finalize_safety(out, parts, cfg.safety, digest),
        part_label=lambda part: part.name,
    )
    return out, commit


def run_dedup(cfg: CurateConfig, pool_uri: str, previous: str | None = None) -> tuple[str, dict]:
    """Hash and describe every pool shard (mapped), then one global search and decision
    (in a refresh also against the images ``previous`` and its ancestors kept)."""
    out = stage_uri(cfg.storage.root, cfg.dataset, cfg.version, "dedup")
    embedder = load_copy_embedder(cfg.dedup)
    prep = prefect_task(dedup.dedup_prepare, name="dedup-prepare")(pool_uri, out, cfg.dedup, embedder, previous)
    if prep["skip"]:
        get_run_logger().info("dedup: committed with the same config and input, skipping (%s)", out)
        return out, read_commit(out)
    map_parts("dedup", prep["shards"], lambda shard: dedup.dedup_shard_part(shard, out, cfg.dedup, embedder),
              part_label=basename)
    commit = prefect_task(dedup.dedup_finalize, name="dedup-finalize")(pool_uri, out, cfg.dedup, embedder, previous)
    return out, commit


def run_embed(cfg: CurateConfig, pool_uri: str, dedup_uri: str) -> tuple[str, dict]:
    """Embed the kept pool images shard by shard, and every query set, with one backbone."""
    out = stage_uri(cfg.storage.root, cfg.dataset, cfg.version, "embed")
    queries = cfg.retrieve.queries
    digest = config_digest({"dedup": digest_of_commit(dedup_uri),
                            "queries": [q.model_dump(mode="json") for q in queries]})
    keep = kept_keys_by_shard(dedup_uri)
    shards = [s.url for s in manifest_shards(pool_uri)]
    parts = [("pool", i, url) for i, url in enumerate(shards)] + [("queries", q.name, q) for q in queries]

    def run_part(part) -> dict:
        kind, ident, item = part
        if kind == "pool":
            return embed.embed_shard(item, keep.get(shard_name(item), []), out, cfg.embed, index=ident)
        return embed.embed_query_set(item, out, cfg.embed)

    def finalize(summaries: list[dict]) -> dict:
        pool = [s for s, p in zip(summaries, parts) if p[0] == "pool"]
        query = [s for s, p in zip(summaries, parts) if p[0] == "queries"]
        return embed.finalize_embed(out, pool, cfg.embed, digest, query)

    commit = run_stage(stage="embed", stage_uri=out, config=cfg.embed, input_digest=digest, parts=parts,
                       run_part=run_part, finalize=finalize, part_label=lambda p: f"{p[0]}-{p[1]}")
    return out, commit


def run_retrieval(cfg: CurateConfig, embed_uri: str, previous: str | None = None) -> tuple[str, dict]:
    out = stage_uri(cfg.storage.root, cfg.dataset, cfg.version, "retrieve")
    return out, prefect_task(run_retrieve, name="retrieve")(embed_uri, out, cfg.retrieve, previous)


def run_shards(cfg: CurateConfig, retrieve_uri: str, pool_uri: str, previous: str | None = None) -> tuple[str, dict]:
    out = stage_uri(cfg.storage.root, cfg.dataset, cfg.version, "shards")
    commit = prefect_task(write_curated_shards, name="shards")(retrieve_uri, pool_uri, out, cfg.shard,
                                                                cfg.retrieve.queries, previous)
    return out, commit


def check_before_start(cfg: CurateConfig) -> None:
    """Every configuration error that can be found without data, before any stage runs."""
    if not cfg.inputs:
        raise ValueError("inputs: curate-lvd needs at least one crawl input (WARC, HTML or URL-list files)")
    cfg.retrieve.require_queries()
    from tasks.queries.sets import check_query_set

    for qs in cfg.retrieve.queries:
        check_query_set(qs)


def resolve_version(version: str) -> str:
    """`auto` names the version after the run's scheduled start, so retries of one run agree."""
    if version != "auto":
        return version
    from prefect.runtime import flow_run

    start = flow_run.scheduled_start_time
    return start.strftime("%Y%m%d-%H%M") if start else datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")


@flow(name="curate-lvd", log_prints=True)
def curate_lvd(cfg: CurateConfig, overrides: list[str] = []) -> dict:
    """Curate a dataset version from crawl inputs; returns the committed stage URIs and counts.

    ``overrides`` are dotted ``key=value`` changes (as on the CLI) applied onto ``cfg``.
    """
    logger = get_run_logger()
    cfg = resolve_cfg(cfg, overrides)
    cfg = cfg.model_copy(update={"version": resolve_version(cfg.version)})
    check_before_start(cfg)
    plan = plan_version(cfg)
    if plan.parent is not None:
        logger.info("refresh of %s from %s: %d new inputs, %d consumed earlier", cfg.dataset, plan.parent,
                    len(plan.new), len(plan.consumed))
    for name in prepare_crawl_limits(cfg.crawl):
        logger.info("global limit %s ready on the Prefect server", name)
    stages: dict[str, dict] = {}

    def record(name: str, result: tuple[str, dict]) -> str:
        uri, commit = result
        stages[name] = {"uri": uri, "counts": commit.get("counts", {})}
        return uri

    with use_task_runner(cfg.runner):
        record("inputs", commit_version_inputs(cfg, plan))
        pool_uri = crawl_uri = record("crawl", run_crawl(cfg, plan.parts))
        if safety_enabled(cfg):
            pool_uri = record("safety", run_safety(cfg, crawl_uri))
        dedup_uri = record("dedup", run_dedup(cfg, pool_uri, previous_stage(cfg, plan, "dedup")))
        embed_uri = record("embed", run_embed(cfg, pool_uri, dedup_uri))
        retrieve_uri = record("retrieve", run_retrieval(cfg, embed_uri, previous_stage(cfg, plan, "retrieve")))
        record("shards", run_shards(cfg, retrieve_uri, pool_uri, previous_stage(cfg, plan, "shards")))
    publish_latest(cfg.storage.root, cfg.dataset, cfg.version, list(stages))
    publish_stage_summary("curate-lvd", cfg.dataset, cfg.version, stages)
    prefect_task(publish_curation_report, name="report")(cfg.dataset, cfg.version, stages, cfg)
    logger.info("curate-lvd finished: %s", {k: v["counts"] for k, v in stages.items()})
    return {"dataset": cfg.dataset, "version": cfg.version, "stages": stages}


def run_from_cli(config: str, overrides: list[str]) -> dict:
    cfg = load_config(PipelineConfig, config, overrides).curate()
    return curate_lvd(cfg)

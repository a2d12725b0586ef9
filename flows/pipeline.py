"""lvd-pipeline: curate-lvd -> train-dinov2 -> distill-dinov2 -> evaluate-dinov2, as one flow.

Each stage reads the previous one's committed artifacts by URI; rerunning the pipeline skips
committed curation stages and resumes training from its last checkpoint. When the embed stage
has no model (`embed.backbone: bootstrap`), a small ViT is first trained on the curated query
sets themselves and used as the curation embedder.
"""
from __future__ import annotations

from prefect import flow, get_run_logger

from flows.config import PipelineConfig
from flows.curate_lvd import curate_lvd
from flows.distill_dinov2 import DistillFlowConfig, distill_dinov2
from flows.evaluate_dinov2 import EvaluateFlowConfig, evaluate_dinov2
from flows.parameters import resolve_cfg
from flows.stages import prefect_task
from flows.train_dinov2 import TrainFlowConfig, train_dinov2
from lvd.config import load_config
from storage.uri import join
from tasks.train.export import export_teacher_backbone

BOOTSTRAP = "bootstrap"


def bootstrap_train_config(cfg: PipelineConfig):
    """The preset's training recipe, shortened, on the first query set's images."""
    queries = cfg.retrieve.queries
    if not queries:
        raise ValueError("embed.backbone=bootstrap needs a query set to train on (retrieve.queries is empty)")
    train = cfg.train.model_copy(deep=True)
    train.data.source = queries[0].uri
    train.data.kind = "auto"
    train.optim.total_steps = max(20, cfg.train.optim.total_steps // 2)
    train.checkpoint.every_steps = train.optim.total_steps
    return train


def bootstrap_embedder(cfg: PipelineConfig, root: str) -> str:
    """Train a small model on the query sets and return its exported backbone's URI."""
    logger = get_run_logger()
    run = f"{cfg.dataset}-{cfg.version}-bootstrap"
    logger.info("no embedding model configured (embed.backbone=bootstrap): training %s on query set %r first",
                run, cfg.retrieve.queries[0].name if cfg.retrieve.queries else None)
    summary = train_dinov2(TrainFlowConfig(storage=cfg.storage, run=run, train=bootstrap_train_config(cfg)))
    return prefect_task(export_teacher_backbone, name="export-bootstrap")(summary["run_uri"])


@flow(name="lvd-pipeline", log_prints=True)
def lvd_pipeline(cfg: PipelineConfig, overrides: list[str] = []) -> dict:
    """The whole DAG on one config; returns the URIs and headline numbers of every step.

    ``overrides`` are dotted ``key=value`` changes (as on the CLI) applied onto ``cfg``.
    """
    logger = get_run_logger()
    cfg = resolve_cfg(cfg, overrides)
    storage = cfg.storage
    curate_cfg = cfg.curate()
    result: dict = {"dataset": cfg.dataset}
    if curate_cfg.embed.backbone == BOOTSTRAP:
        backbone = bootstrap_embedder(cfg, storage.root)
        # The bootstrap model is the preset's training architecture, not the embed.arch a file would be held to.
        curate_cfg = curate_cfg.model_copy(
            update={"embed": curate_cfg.embed.model_copy(update={"backbone": backbone, "arch": None})})
        result["bootstrap_backbone"] = backbone
    curated = curate_lvd(curate_cfg)
    result["curate"] = curated
    shards_uri = curated["stages"]["shards"]["uri"]
    train = cfg.train.model_copy(deep=True)
    train.data.source = shards_uri
    train.data.kind = "shards"
    run = f"{cfg.dataset}-{curated['version']}-{train.model.arch}"
    trained = train_dinov2(TrainFlowConfig(storage=cfg.storage, run=run, train=train))
    result["train"] = {k: trained.get(k) for k in ("run_uri", "checkpoint_uri", "final", "knn")}
    result["backbone"] = prefect_task(export_teacher_backbone, name="export-backbone")(trained["run_uri"])

    distill = cfg.distill.model_copy(deep=True)
    distill.teacher.uri = trained["run_uri"]
    distill.data.source = shards_uri
    distill.data.kind = "shards"
    distilled = distill_dinov2(DistillFlowConfig(
        storage=cfg.storage, run=f"{run}-distill-{distill.student.arch}", distill=distill))
    result["distill"] = {k: distilled.get(k) for k in ("run_uri", "checkpoint_uri", "final", "knn")}

    # the random-init row is the train run's own architecture, however the preset's baselines are set
    evaluate = cfg.evaluate.model_copy(
        update={"models": [trained["run_uri"], distilled["run_uri"]]}).with_random_init_of(trained["run_uri"])
    evaluated = evaluate_dinov2(EvaluateFlowConfig(storage=cfg.storage, run=f"{run}-eval", evaluate=evaluate))
    result["evaluate"] = {k: evaluated.get(k) for k in ("run_uri", "report_uri", "results_uri", "table")}
    result["reports"] = {"evaluation report": evaluated.get("report_uri"),
                         "evaluation results": evaluated.get("results_uri"),
                         **{f"picture {name}": uri for name, uri in (evaluated.get("pictures") or {}).items()}}
    logger.info("lvd-pipeline: dataset %s, backbone %s, report %s", shards_uri, result["backbone"],
                evaluated.get("report_uri"))
    return result


def run_from_cli(config: str, overrides: list[str]) -> dict:
    return lvd_pipeline(load_config(PipelineConfig, config, overrides))

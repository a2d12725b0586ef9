"""evaluate-dinov2: k-NN, linear probes, copy detection, patch matching and patch-PCA pictures, all models in one table.

Thin orchestration: a Prefect task checks every dataset and model (before any feature is
computed), one runs ``tasks.evaluate.run.evaluate``; artifacts are the comparison table, the
Markdown report, the PCA pictures and the patch-matching pictures inline.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from flows.form import add_form_positions
from flows.reporting import _artifact_key, publish_picture
from flows.parameters import resolve_cfg
from flows.stages import prefect_task, use_storage, with_effective_storage
from storage.config import StorageConfig
from tasks.evaluate.config import EvaluateConfig


class EvaluateFlowConfig(BaseModel):
    """Parameters of the evaluate-dinov2 flow."""

    model_config = ConfigDict(extra="forbid")

    storage: StorageConfig = Field(default_factory=StorageConfig, description="Where runs and reports are stored.")
    run: str = Field("dinov2-eval", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$",
                     description="Report name: runs/{run} under the storage root.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="What to evaluate and how.")


add_form_positions(EvaluateFlowConfig)


def _check_task(cfg: EvaluateConfig) -> dict:
    from tasks.evaluate.run import prepare

    sets, models = prepare(cfg)
    return {"datasets": [s.name for s in sets], "models": [m.name for m in models]}


def _evaluate_task(cfg: EvaluateConfig, run_uri: str) -> dict:
    from tasks.evaluate.run import evaluate

    return evaluate(cfg, run_uri, log=get_run_logger().info)


def publish_evaluation(summary: dict, run: str) -> None:
    from storage.uri import read_bytes

    create_table_artifact(key=_artifact_key(f"evaluate-{run}-table"), table=summary["table"],
                          description=f"evaluate-dinov2 {run}: every model on every set")
    create_markdown_artifact(key=_artifact_key(f"evaluate-{run}-report"),
                             markdown=read_bytes(summary["report_uri"]).decode(),
                             description=f"evaluate-dinov2 {run}: report ({summary['results_uri']})")
    for name, uri in summary["pictures"].items():
        publish_picture(f"evaluate-{run}-pca-{name}", f"Patch PCA: {name}", read_bytes(uri),
                        f"evaluate-dinov2 {run}: patch-feature PCA of {name}",
                        "Foreground from the first component; its top three components as RGB.")
    for name, uri in summary.get("match_pictures", {}).items():
        publish_picture(f"evaluate-{run}-matches-{name}", f"Patch matches: {name}", read_bytes(uri),
                        f"evaluate-dinov2 {run}: patch matches of {name} on planted copies",
                        "Mutual nearest neighbours of foreground patches; green within the radius of the true "
                        "location, red not.")


@flow(name="evaluate-dinov2")
def evaluate_dinov2(cfg: EvaluateFlowConfig = EvaluateFlowConfig(), overrides: list[str] = []) -> dict:
    """Evaluate into {storage.root}/runs/{run}; returns the comparison table and report URIs.

    ``overrides`` are dotted ``key=value`` changes (as on the CLI) applied onto ``cfg``.
    """
    from storage.uri import join


    cfg = resolve_cfg(cfg, overrides)
    storage = cfg.storage
    run_uri = join(storage.root, "runs", cfg.run)
    checked = prefect_task(_check_task, name="check-inputs")(cfg.evaluate)
    get_run_logger().info("evaluating %s on %s", checked["models"], checked["datasets"])
    summary = prefect_task(_evaluate_task, name="evaluate")(cfg.evaluate, run_uri)
    publish_evaluation(summary, cfg.run)
    return summary


def run_from_cli(config: str, overrides: list[str]) -> dict:
    """``lvd evaluate --config PRESET [evaluate.models=[URI,...]]``; with no models listed, the train and
    distill runs of the same preset that exist are evaluated, next to the train run's architecture at
    random init."""
    from flows.config import PipelineConfig
    from lvd.config import load_config
    from storage.uri import exists, join

    cfg = load_config(PipelineConfig, config, overrides)
    ecfg = cfg.evaluate
    if not ecfg.models:
        cfg = with_effective_storage(cfg)
        runs = [join(cfg.storage.root, "runs", f"{cfg.dataset}-{cfg.train.model.arch}"),
                join(cfg.storage.root, "runs", f"{cfg.dataset}-distill-{cfg.distill.student.arch}")]
        found = [r for r in runs if exists(join(r, "config.json"))]
        ecfg = ecfg.model_copy(update={"models": found})
        if found:
            ecfg = ecfg.with_random_init_of(found[0])
    return evaluate_dinov2(EvaluateFlowConfig(storage=cfg.storage, run=f"{cfg.dataset}-eval", evaluate=ecfg))

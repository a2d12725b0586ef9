"""train-dinov2: pretrain a DINOv2 ViT on committed shards, an image folder or Fashion-MNIST.

Thin orchestration: one Prefect task wraps ``tasks.train.run.run_training`` (which launches
torchrun when the host has several GPUs or N CPU processes are asked for), then artifacts
show the k-NN curve, the final metrics and where the checkpoint is.
"""

from __future__ import annotations

import base64

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from flows.form import add_form_positions
from flows.reporting import _artifact_key
from flows.parameters import resolve_cfg
from flows.stages import prefect_task
from storage.config import StorageConfig
from tasks.train.config import TrainConfig
from tasks.train.report import knn_curve, knn_markdown, line_chart_png, phases_markdown
from tasks.train.run import run_training


class TrainFlowConfig(BaseModel):
    """Parameters of the train-dinov2 flow."""

    model_config = ConfigDict(extra="forbid")

    storage: StorageConfig = Field(default_factory=StorageConfig, description="Where runs are stored.")
    run: str = Field("dinov2-run", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$",
                     description="Run name: runs/{run} under the storage root; rerunning resumes it.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The training run itself.")


add_form_positions(TrainFlowConfig)


def _train_task(cfg: TrainConfig, run_uri: str) -> dict:
    logger = get_run_logger()
    return run_training(cfg, run_uri, log=logger.info)


def publish_training_artifacts(summary: dict, run: str) -> None:
    curve = knn_curve(summary, k=20)
    md = [f"# {run}: k-NN top-1 (teacher CLS, T=0.07)", "", knn_markdown(summary), ""]
    if curve:
        png = line_chart_png([(s, 100 * v) for s, v in curve], title="k-NN top-1 (k=20), %")
        md.append(f"![k-NN curve](data:image/png;base64,{base64.b64encode(png).decode()})")
    if summary.get("phases"):
        md += ["", "## Phases", "", phases_markdown(summary)]
    md.append(f"\nCheckpoint: `{summary.get('checkpoint_uri')}`  \nMetrics: `{summary.get('metrics_uri')}`")
    create_markdown_artifact(key=_artifact_key(f"train-{run}-knn"), markdown="\n".join(md),
                             description=f"train-dinov2 {run}: k-NN curve and checkpoint")
    rows = [{"metric": k, "value": round(v, 5)} for k, v in (summary.get("final") or {}).items()]
    rows += [{"metric": k, "value": v} for k in ("steps", "global_batch", "ln_k", "images_per_s", "peak_memory_mb")
             if (v := summary.get(k)) is not None]
    create_table_artifact(key=_artifact_key(f"train-{run}-final"), table=rows,
                          description=f"train-dinov2 {run}: final metrics (mean of the last 20% of steps)")


@flow(name="train-dinov2")
def train_dinov2(cfg: TrainFlowConfig = TrainFlowConfig(), overrides: list[str] = []) -> dict:
    """Train into {storage.root}/runs/{run}; returns the run summary (URIs and numbers only).

    ``overrides`` are dotted ``key=value`` changes (as on the CLI) applied onto ``cfg``.
    """
    from storage.uri import join


    cfg = resolve_cfg(cfg, overrides)
    storage = cfg.storage
    run_uri = join(storage.root, "runs", cfg.run)
    summary = prefect_task(_train_task, name="train")(cfg.train, run_uri)
    publish_training_artifacts(summary, cfg.run)
    return summary


def run_from_cli(config: str, overrides: list[str]) -> dict:
    """``lvd train --config PRESET [train.optim.total_steps=...]``: the preset's ``train`` section."""
    from flows.config import PipelineConfig
    from lvd.config import load_config

    cfg = load_config(PipelineConfig, config, overrides)
    run = f"{cfg.dataset}-{cfg.train.model.arch}"
    return train_dinov2(TrainFlowConfig(storage=cfg.storage, run=run, train=cfg.train))

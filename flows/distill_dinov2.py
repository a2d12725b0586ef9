"""distill-dinov2: distill a frozen DINOv2 teacher (with its heads) into a smaller student.

Thin orchestration: one Prefect task checks the teacher/student pair (before any training), one
runs ``tasks.distill.loop.distill``; artifacts show the student's k-NN next to the teacher's and
where the student EMA checkpoint is.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from flows.form import add_form_positions
from flows.reporting import _artifact_key
from flows.parameters import resolve_cfg
from flows.stages import prefect_task
from storage.config import StorageConfig
from tasks.distill.config import DistillConfig


class DistillFlowConfig(BaseModel):
    """Parameters of the distill-dinov2 flow."""

    model_config = ConfigDict(extra="forbid")

    storage: StorageConfig = Field(default_factory=StorageConfig, description="Where runs are stored.")
    run: str = Field("dinov2-distill", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$",
                     description="Run name: runs/{run} under the storage root; rerunning resumes it.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="The distillation run itself.")


add_form_positions(DistillFlowConfig)


def _check_task(cfg: DistillConfig) -> dict:
    from tasks.distill.loop import prepare

    teacher, tcfg, model = prepare(cfg)
    return {"teacher": teacher.model_id, "teacher_params": teacher.n_params(),
            "student_params": sum(p.numel() for p in model.student["backbone"].parameters())}


def _distill_task(cfg: DistillConfig, run_uri: str) -> dict:
    from tasks.distill.loop import distill

    return distill(cfg, run_uri, log=get_run_logger().info)


def publish_distill_artifacts(summary: dict, run: str) -> None:
    rows = [{"model": "teacher " + summary["teacher"]["model_id"], "params": summary["teacher"]["params"],
             **{k: round(v, 4) for k, v in summary.get("teacher_knn", {}).items() if k.startswith("knn_")}}]
    last = summary["knn"][max(summary["knn"], key=int)] if summary.get("knn") else {}
    rows.append({"model": f"student {summary['student']['arch']} (EMA)", "params": summary["student"]["params"],
                 **{k: round(v, 4) for k, v in last.items() if k.startswith("knn_")}})
    create_table_artifact(key=_artifact_key(f"distill-{run}-knn"), table=rows,
                          description=f"distill-dinov2 {run}: k-NN top-1 of teacher and student")
    final = ", ".join(f"{k}={v:.4f}" for k, v in summary.get("final", {}).items())
    create_markdown_artifact(
        key=_artifact_key(f"distill-{run}-result"),
        markdown=f"# {run}\n\nFinal losses (last 20% of steps): {final}\n\n"
        f"Student EMA checkpoint: `{summary.get('checkpoint_uri')}`  \nMetrics: `{summary.get('metrics_uri')}`\n",
        description=f"distill-dinov2 {run}: result")


@flow(name="distill-dinov2")
def distill_dinov2(cfg: DistillFlowConfig = DistillFlowConfig(), overrides: list[str] = []) -> dict:
    """Distill into {storage.root}/runs/{run}; returns the run summary (URIs and numbers only).

    ``overrides`` are dotted ``key=value`` changes (as on the CLI) applied onto ``cfg``.
    """
    from storage.uri import join


    cfg = resolve_cfg(cfg, overrides)
    storage = cfg.storage
    run_uri = join(storage.root, "runs", cfg.run)
    checked = prefect_task(_check_task, name="check-teacher-student")(cfg.distill)
    get_run_logger().info("distilling %s (%d params) into %d params", checked["teacher"],
                          checked["teacher_params"], checked["student_params"])
    summary = prefect_task(_distill_task, name="distill")(cfg.distill, run_uri)
    publish_distill_artifacts(summary, cfg.run)
    return summary


def run_from_cli(config: str, overrides: list[str]) -> dict:
    """``lvd distill --config PRESET [distill.optim.total_steps=...]``; an empty teacher URI means the
    train-dinov2 run of the same preset."""
    from flows.config import PipelineConfig
    from lvd.config import load_config
    from storage.uri import join

    cfg = load_config(PipelineConfig, config, overrides)
    dcfg = cfg.distill
    if not dcfg.teacher.uri:
        teacher_run = join(cfg.storage.root, "runs", f"{cfg.dataset}-{cfg.train.model.arch}")
        dcfg = dcfg.model_copy(update={"teacher": dcfg.teacher.model_copy(update={"uri": teacher_run})})
    run = f"{cfg.dataset}-distill-{dcfg.student.arch}"
    return distill_dinov2(DistillFlowConfig(storage=cfg.storage, run=run, distill=dcfg))

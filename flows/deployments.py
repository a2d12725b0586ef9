"""The deployments lvd declares, rendered into prefect.yaml.

prefect.yaml is generated from this table and the presets in configs/ (`python -m
flows.deployments > prefect.yaml`) and a test keeps the two identical, so a deployment's
parameters never drift from the preset it names.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import yaml

from flows.config import PipelineConfig
from lvd.config import load_config
from storage.uri import join

CPU_POOL = "lvd-cpu"
GPU_POOL = "lvd-gpu"


@dataclass(frozen=True)
class Deployment:
    flow: str            # the flow's name, as `prefect deployment run FLOW/NAME` wants it
    name: str
    entrypoint: str
    preset: str
    pool: str = CPU_POOL
    description: str = ""
    schedules: list[dict] = field(default_factory=list)
    # Which part of the preset becomes the flow's `cfg` parameter.
    section: str = "curate"


WEEKLY_REFRESH = {"cron": "0 3 * * 0", "timezone": "UTC", "active": False}

DEPLOYMENTS = [
    Deployment("curate-lvd", "cpu-tiny", "flows/curate_lvd.py:curate_lvd", "cpu-tiny",
               description="Curate the demo web on CPU (small, fast: the smoke test of a deployment)."),
    Deployment("curate-lvd", "lvd-142m", "flows/curate_lvd.py:curate_lvd", "lvd-142m",
               description="Production curation with the paper's settings; weekly refresh into a new version.",
               schedules=[WEEKLY_REFRESH]),
    Deployment("train-dinov2", "cpu-tiny", "flows/train_dinov2.py:train_dinov2", "cpu-tiny", section="train",
               description="Pretrain the tiny preset on Fashion-MNIST on CPU (k-NN climbs within minutes)."),
    Deployment("train-dinov2", "vitl14", "flows/train_dinov2.py:train_dinov2", "vitl14", pool=GPU_POOL,
               section="train", description="Pretrain ViT-L/14 with the official recipe on GPUs (torchrun + FSDP)."),
    Deployment("distill-dinov2", "cpu-tiny", "flows/distill_dinov2.py:distill_dinov2", "cpu-tiny",
               section="distill", description="Distill the train-dinov2/cpu-tiny run into a student on CPU."),
    Deployment("evaluate-dinov2", "cpu-tiny", "flows/evaluate_dinov2.py:evaluate_dinov2", "cpu-tiny",
               section="evaluate", description="k-NN, linear probes, copy detection and PCA pictures of the "
               "cpu-tiny train and distill runs."),
    Deployment("lvd-pipeline", "cpu-tiny", "flows/pipeline.py:lvd_pipeline", "cpu-tiny", section="pipeline",
               description="The whole DAG on the cpu-tiny preset: curate, train, export the backbone."),
]


def teacher_run(cfg: PipelineConfig) -> str:
    """The run name train-dinov2 deployments write, which distill and evaluate read."""
    return f"{cfg.dataset}-{cfg.train.model.arch}"


def parameters_for(dep: Deployment) -> dict:
    cfg = load_config(PipelineConfig, dep.preset)
    if dep.section == "pipeline":
        part = cfg
    elif dep.section == "train":
        from flows.train_dinov2 import TrainFlowConfig

        part = TrainFlowConfig(storage=cfg.storage, run=teacher_run(cfg), train=cfg.train)
    elif dep.section == "distill":
        from flows.distill_dinov2 import DistillFlowConfig

        distill = cfg.distill.model_copy(deep=True)
        distill.teacher.uri = distill.teacher.uri or join(cfg.storage.root, "runs", teacher_run(cfg))
        part = DistillFlowConfig(storage=cfg.storage, run=f"{cfg.dataset}-distill-{distill.student.arch}",
                                 distill=distill)
    elif dep.section == "evaluate":
        from flows.evaluate_dinov2 import EvaluateFlowConfig

        runs = [join(cfg.storage.root, "runs", teacher_run(cfg)),
                join(cfg.storage.root, "runs", f"{cfg.dataset}-distill-{cfg.distill.student.arch}")]
        evaluate = cfg.evaluate.model_copy(update={"models": cfg.evaluate.models or runs})
        part = EvaluateFlowConfig(storage=cfg.storage, run=f"{cfg.dataset}-eval", evaluate=evaluate)
    else:
        part = getattr(cfg, dep.section)()
        if dep.section == "curate" and dep.schedules:
            part = scheduled_refresh(part)
    return {"cfg": part.model_dump(mode="json", exclude_defaults=True)}


def scheduled_refresh(cfg):
    """A scheduled curation refreshes the dataset: a new version named after the run's start, built on
    `latest` (the first run, with nothing published yet, builds it from every input)."""
    from flows.config import RefreshConfig

    return cfg.model_copy(update={"version": "auto",
                                  "refresh": RefreshConfig(from_version="latest", if_missing="full")})


def render() -> str:
    doc = {
        "name": "lvd",
        "prefect-version": "3.8.8",
        "build": None,
        "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $LVD_PROJECT_DIR }}"}}],
        "deployments": [
            {
                "name": d.name,
                "description": d.description,
                "entrypoint": d.entrypoint,
                "parameters": parameters_for(d),
                "work_pool": {"name": d.pool, "work_queue_name": "default", "job_variables": {}},
                "schedules": d.schedules,
                "tags": ["lvd", d.flow],
            }
            for d in DEPLOYMENTS
        ],
    }
    header = "# Generated by `python -m flows.deployments > prefect.yaml`; edit flows/deployments.py instead.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())

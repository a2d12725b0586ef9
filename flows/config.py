"""The typed parameters of the flows: one model per flow, nesting the stage models.

`PipelineConfig` is what a preset YAML in configs/ holds; each flow takes the part it
needs, so `lvd curate --config cpu-tiny` and the `curate-lvd` deployment read the same file.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from flows.form import add_form_positions
from flows.runner import RunnerConfig
from storage.config import StorageConfig
from tasks.crawl.config import CrawlConfig
from tasks.dedup.config import DedupConfig
from tasks.distill.config import DistillConfig
from tasks.embed.config import EmbedConfig
from tasks.evaluate.config import EvaluateConfig
from tasks.retrieve.config import RetrieveConfig
from tasks.safety.config import SafetyConfig
from tasks.shard.config import ShardConfig
from tasks.train.config import TrainConfig


class RefreshConfig(BaseModel):
    """Build a version on top of an earlier one: crawl only new inputs, dedup them against it, keep its shards."""

    model_config = ConfigDict(extra="forbid")

    from_version: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$",
        description="Version to refresh from: a version name, or `latest` for the published one. "
        "Empty: a full build from every input.")
    if_missing: Literal["full", "error"] = Field(
        "error",
        description="When from_version names no version yet (a dataset's first scheduled run): `full` builds "
        "the first version from every input, `error` refuses to start.")


class CurateConfig(BaseModel):
    """curate-lvd: crawl -> dedup -> embed -> retrieve -> shards under one dataset version.

    Fields are declared in the order the run form shows them (flows/form.py): where (storage), what
    (dataset, version), from what (inputs), the stages in pipeline order, then how (runner, refresh).
    """

    model_config = ConfigDict(extra="forbid")

    storage: StorageConfig = Field(default_factory=StorageConfig, description="Where the dataset lives.")
    dataset: str = Field("lvd", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$",
                         description="Dataset name: the folder under the storage root.")
    version: str = Field("v1", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$",
                         description="Dataset version; a committed version is immutable, a refresh writes a new one. "
                         "`auto` names it after the run's scheduled start (UTC, YYYYMMDD-HHMM).")
    inputs: list[str] = Field(
        default_factory=list,
        description="Crawl inputs: WARC files (.warc, .warc.gz), HTML files, or text files of page URLs "
        "(.txt, one per line), as local paths, file:// or s3:// URIs; a folder or a glob "
        "(s3://bucket/warc/2026-*/*.warc.gz, ** across folders) stands for the files it holds when the run plans.",
    )
    crawl: CrawlConfig = Field(default_factory=CrawlConfig, description="Fetching and storing images.")
    safety: SafetyConfig = Field(default_factory=SafetyConfig, description="NSFW removal and face blurring.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Exact, perceptual and copy dedup; eval-set decontamination.")
    embed: EmbedConfig = Field(default_factory=EmbedConfig, description="The backbone that embeds pool and queries.")
    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig, description="k-means, index and selection rules per query set.")
    shard: ShardConfig = Field(default_factory=ShardConfig, description="The curated WebDataset shards.")
    runner: RunnerConfig = Field(default_factory=RunnerConfig,
                                 description="Where each stage's parts run: threads here, or a Dask cluster.")
    refresh: RefreshConfig = Field(default_factory=RefreshConfig,
                                   description="Incremental build on top of an earlier version of this dataset.")


def curate_fields() -> set[str]:
    return set(CurateConfig.model_fields)


class PipelineConfig(CurateConfig):
    """A whole preset: every stage's settings in one file."""

    model_config = ConfigDict(extra="forbid")

    train: TrainConfig = Field(default_factory=TrainConfig, description="DINOv2 pretraining (train-dinov2).")
    distill: DistillConfig = Field(default_factory=DistillConfig,
                                   description="Distillation into a smaller student (distill-dinov2).")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig,
                                     description="k-NN, linear probes, copy detection and PCA pictures (evaluate-dinov2).")

    def curate(self) -> CurateConfig:
        return CurateConfig.model_validate(self.model_dump(include=curate_fields()))


add_form_positions(CurateConfig, PipelineConfig)

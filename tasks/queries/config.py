"""Typed settings of one curated query set: where its images are and the rule that turns it into pool picks."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class QuerySetConfig(BaseModel):
    """One curated dataset that steers retrieval, and the rule that turns it into pool picks."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64, description="Short name, used in paths and provenance.")
    uri: str = Field(..., min_length=1, description="Image folder, WebDataset .tar (or folder of them), or Parquet list of image paths/URIs.")
    format: Literal["auto", "folder", "webdataset", "parquet"] = Field(
        "auto", description="How to read uri; auto: .parquet -> parquet, .tar or a folder of .tar -> webdataset, else folder."
    )
    rule: Literal["sample", "cluster", "as-is"] = Field(
        "sample",
        description="sample: N nearest pool images per query; cluster: M images from each pool cluster holding "
        "more than min_queries_per_cluster queries; as-is: the curated images themselves join the dataset.",
    )
    n_neighbours: int = Field(4, ge=1, le=1024, description="N for the sample rule (DINOv2: 4, 32 for ImageNet-1k).")
    per_cluster: int = Field(10_000, ge=1, le=10_000_000, description="M for the cluster rule: pool images taken from each qualifying cluster.")
    min_queries_per_cluster: int = Field(3, ge=0, le=1_000_000, description="A cluster qualifies when it holds more than this many query images.")
    cap: int | None = Field(1_000_000, ge=1, description="Most pool images this dataset may contribute (best similarities kept); None: no cap.")
    path_column: str = Field("path", min_length=1, description="Parquet column holding image paths or URIs (relative ones resolve against the Parquet file's folder).")
    label_column: str | None = Field("label", description="Parquet column with class labels, if any.")

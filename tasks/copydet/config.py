"""Typed settings of a copy-detector run (``train-copy-detector``): the SSCD recipe at lvd's sizes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.train.config import Arch


class CopyDetectorConfig(BaseModel):
    """A ViT with GeM pooling and a projection, trained contrastively on pairs of edited views (SSCD)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "", description="Images to train on: a crawl pool or curated shards stage, an image folder, or fashion-mnist "
        "(local path, file:// or s3://; no labels needed). Empty in lvd pipeline: the version's crawl pool.")
    kind: Literal["auto", "shards", "image_folder", "fashion_mnist"] = Field(
        "auto", description="How to read the source ('auto': shards where a manifest exists, else a folder).")
    arch: Arch = Field("vit_pico", description="Backbone ViT preset (the smallest registry sizes train on CPU).")
    patch_size: int = Field(14, ge=2, le=32, description="Patch size in pixels.")
    image_size: int = Field(56, ge=8, le=1024, description="Side of the square the whole image is resized to (px).")
    descriptor_dim: int = Field(128, ge=8, le=4096, description="Size of the copy descriptor (the projection's output).")
    steps: int = Field(300, ge=1, description="Optimiser steps.")
    batch_size: int = Field(32, ge=4, le=4096, description="Images per step; each gives two edited views.")
    lr: float = Field(1e-3, gt=0, le=1, description="Peak learning rate (AdamW, warmup then cosine).")
    weight_decay: float = Field(0.05, ge=0, le=1, description="AdamW weight decay.")
    temperature: float = Field(0.05, gt=0, le=1, description="InfoNCE temperature (SSCD: 0.05).")
    entropy_weight: float = Field(
        5.0, ge=0, description="Weight of the KoLeo (differential-entropy) regulariser that spreads descriptors.")
    min_crop_area: float = Field(0.3, gt=0.05, le=1, description="Smallest area fraction a training crop keeps.")
    calibration_images: int = Field(
        48, ge=4, le=100_000, description="Images edited (one copy per edit type) to calibrate the thresholds.")
    target_precision: float = Field(0.99, gt=0, le=1, description="Pair precision the copy threshold is chosen to meet.")
    eval_precision: float = Field(0.9, gt=0, le=1, description="Pair precision of the (looser) eval-set threshold.")
    checkpoint_every: int = Field(100, ge=1, description="Write a checkpoint every this many steps (and at the end).")
    seed: int = Field(0, ge=0, description="Seed of weights, data order and edits (calibration draws its own).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device: 'auto' picks CUDA when present.")
    cpu_threads: int = Field(0, ge=0, le=256, description="Torch threads on CPU (0: torch's default).")

"""Typed settings of the shard-writing stage."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ShardConfig(BaseModel):
    """Size and order of the curated WebDataset shards."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = Field("lvd", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", max_length=32, description="Shard file prefix: {prefix}-000000.tar.")
    samples_per_shard: int = Field(10_000, ge=1, le=10_000_000, description="A shard is closed when it holds this many samples.")
    max_shard_bytes: int = Field(1 << 30, ge=1 << 16, le=1 << 40, description="A shard never grows past this many bytes (tar padding aside); whichever limit comes first closes it.")
    shuffle: bool = Field(True, description="Shuffle samples across sources and shards (seeded); off keeps selection order.")
    seed: int = Field(0, ge=0, description="Seed of the shuffle.")
    bucket_samples: int = Field(
        20_000, ge=1, le=10_000_000,
        description="Samples per local scatter bucket while shuffling (one bucket is held in memory at a time).",
    )
    max_buckets: int = Field(512, ge=1, le=4096, description="Most scatter buckets open at once (buckets grow beyond bucket_samples to respect it).")

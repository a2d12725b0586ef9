"""Typed settings of the retrieval stage; the curated query sets it selects with are tasks.queries.config."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.queries.config import QuerySetConfig


class KMeansConfig(BaseModel):
    """Spherical k-means over the pool embeddings."""

    model_config = ConfigDict(extra="forbid")

    n_clusters: int = Field(100_000, ge=1, le=100_000_000, description="k (DINOv2: 100,000).")
    n_iter: int = Field(20, ge=1, le=1000, description="Lloyd iterations.")
    n_redo: int = Field(1, ge=1, le=20, description="Independent restarts; the one with the best objective is kept.")
    train_sample: int = Field(1_000_000, ge=1, description="At most this many pool vectors (seeded sample) train the centroids.")
    coarse_clusters: int | None = Field(
        None, ge=1, description="Two-level mode: k-means into this many coarse clusters, then split each into its share of n_clusters."
    )
    assign_batch: int = Field(65_536, ge=1, le=10_000_000, description="Pool vectors assigned to centroids per batch.")
    seed: int = Field(0, ge=0, description="Seed for sampling and initialisation.")
    use_gpu: bool = Field(True, description="Use faiss GPU k-means when faiss sees a GPU.")


class IndexConfig(BaseModel):
    """Nearest-neighbour index over the pool used by the sample rule."""

    model_config = ConfigDict(extra="forbid")

    factory: str = Field(
        "IVF{nlist},PQ{m}x4fs",
        min_length=1,
        description="faiss index_factory string; {nlist} and {m} are filled from the pool size and dimension.",
    )
    exact_below: int = Field(200_000, ge=0, description="Pools smaller than this use exact IndexFlatIP instead of the factory.")
    nlist: int | None = Field(None, ge=1, description="IVF lists; None: about 4*sqrt(pool size).")
    pq_m: int | None = Field(None, ge=1, description="PQ sub-quantizers; None: dim/4 (must divide dim).")
    nprobe: int = Field(32, ge=1, le=65_536, description="IVF lists probed per query.")
    refine_k_factor: float = Field(
        4.0, ge=1.0, le=1000.0,
        description="For factories with a refinement stage (',RFlat', ',Refine(...)'): candidates re-ranked per wanted neighbour.",
    )
    train_size: int = Field(200_000, ge=1000, description="At most this many pool vectors train the index.")
    recall_sample: int = Field(1000, ge=0, le=100_000, description="Queries used to measure recall@k against exact search (0: skip).")
    seed: int = Field(0, ge=0, description="Seed for training and recall samples.")


class BalancedConfig(BaseModel):
    """Hierarchical k-means plus balanced sampling (Vo et al. 2024), the query-free strategy."""

    model_config = ConfigDict(extra="forbid")

    levels: list[int] = Field([1000, 100], min_length=1, max_length=6, description="Clusters per level, finest first; level t clusters the centroids of level t-1.")
    resampling_steps: int = Field(0, ge=0, le=50, description="Resampling-clustering steps per level above the first.")
    resample_size: int = Field(4, ge=1, description="Points nearest each centroid that re-train it in a resampling step.")
    target_size: int = Field(1_000_000, ge=1, description="Images to select.")
    pick: Literal["random", "closest"] = Field("random", description="Within a leaf cluster: random images, or the ones closest to its centroid.")
    seed: int = Field(0, ge=0, description="Seed for sampling.")


class RetrieveConfig(BaseModel):
    """How pool images are chosen for the curated dataset."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["retrieval", "hierarchical_balanced"] = Field(
        "retrieval", description="Query-driven retrieval (DINOv2) or query-free balanced sampling (Vo et al.)."
    )
    queries: list[QuerySetConfig] = Field(default_factory=list, description="Curated query sets with their rules.")
    kmeans: KMeansConfig = Field(default_factory=KMeansConfig, description="Pool clustering.")
    index: IndexConfig = Field(default_factory=IndexConfig, description="Retrieval index for the sample rule.")
    balanced: BalancedConfig = Field(default_factory=BalancedConfig, description="Settings of the hierarchical_balanced strategy.")
    min_similarity: float = Field(-1.0, ge=-1.0, le=1.0, description="Pool picks below this cosine similarity are dropped.")
    max_total: int | None = Field(None, ge=1, description="Most pool images in the whole selection (best similarities kept); None: no cap.")

    @model_validator(mode="after")
    def _check(self) -> "RetrieveConfig":
        names = [q.name for q in self.queries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"query set names must be unique, repeated: {dupes}")
        return self

    def require_queries(self) -> None:
        """The retrieval strategy cannot run without query sets; checked when a run starts, so that
        the defaults stay a valid (empty) form in the Prefect UI."""
        if self.strategy == "retrieval" and not self.queries:
            raise ValueError("retrieve.queries: strategy 'retrieval' needs at least one query set")
        bad = [q.name for q in self.queries if q.rule != "as-is"]
        if self.strategy == "hierarchical_balanced" and bad:
            raise ValueError(f"retrieve.queries: strategy 'hierarchical_balanced' only takes as-is query sets, not {bad}")

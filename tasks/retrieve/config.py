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
    """Hierarchical k-means plus balanced sampling (Vo et al. 2024), the query-free strategy.

    The defaults follow Meta's ssl-data-curation: L2 k-means with k-means++ seeding and 50
    iterations, 10 resampling steps on every level that is not split, each re-fitting the level
    from scratch on about half of each cluster's points nearest its centroid, and picking the
    images closest to their leaf centroid. The alternatives stay as options."""

    model_config = ConfigDict(extra="forbid")

    levels: list[int] = Field([1000, 100], min_length=1, max_length=6, description="Clusters per level, finest first; level t clusters the centroids of level t-1.")
    split: int = Field(1, ge=1, le=10_000, description="Split every first-level cluster into this many by k-means on its members, so level 1 ends with levels[0] x split clusters (ssl-data-curation's 4-level web config: 100,000 x 100). A split level is not resampled.")
    resampling_steps: int | list[int] = Field(10, description="Resampling steps per level (one value for every level, or one per level); a split first level takes none.")
    resample_size: int | list[int] | None = Field(None, description="Points nearest each centroid that re-fit it in a resampling step (one value, or one per level); None: half the level's mean cluster size. A level with 1 or less is not resampled.")
    init: Literal["kmeans++", "random"] = Field("kmeans++", description="Centroid seeding: k-means++ (greedy, 2 + ln k trials) or random points (faiss's; cheaper at very large k).")
    distance: Literal["l2", "cosine"] = Field("l2", description="Lloyd's distance: squared L2 with mean centroids (the official code), or cosine with unit centroids.")
    refit: Literal["fresh", "previous"] = Field("fresh", description="A resampling step seeds its k-means anew (official) or starts from the previous centroids.")
    n_iter: int = Field(50, ge=1, le=1000, description="Lloyd iterations of every k-means run.")
    target_size: int = Field(1_000_000, ge=1, description="Images to select.")
    pick: Literal["random", "closest"] = Field("closest", description="Within a leaf cluster: the images closest to its centroid (official), or random ones.")
    seed: int = Field(0, ge=0, description="Seed for seeding, resampling and sampling.")

    @model_validator(mode="after")
    def _check(self) -> "BalancedConfig":
        for name in ("resampling_steps", "resample_size"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) != len(self.levels):
                raise ValueError(f"{name}: {len(value)} values for {len(self.levels)} levels")
            if any(v < 0 for v in (value if isinstance(value, list) else [value or 0])):
                raise ValueError(f"{name} must not be negative: {value}")
        sizes = [self.levels[0] * self.split] + self.levels[1:]
        if any(upper > lower for lower, upper in zip(sizes, sizes[1:])):
            raise ValueError(f"levels must not grow upwards: {sizes} clusters per level (after the split)")
        return self

    def per_level(self, name: str) -> list:
        """``resampling_steps`` or ``resample_size`` as one value per level."""
        value = getattr(self, name)
        return list(value) if isinstance(value, list) else [value] * len(self.levels)


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

"""A committed embed stage of synthetic clustered descriptors, written shard by shard with the embed
stage's own writers, so retrieval (and benchmarks of it) run on real stage files without a model.

Pool rows of shard ``i`` come from their own seeded generator, so a pool of any size is written with
memory bounded by one shard, and the same (seed, shard) always gives the same rows. Query sets are
drawn around the same centres as the pool (they are what the pool is searched for).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.commit import mark_part_done
from tasks.embed.config import EmbedConfig
from tasks.embed.run import finalize_embed, write_pool_shard, write_query_embeddings

MODEL_ID = "synthetic-clusters"
# Only the config's digest is recorded; the vectors do not come from this embedder.
EMBED_CFG = EmbedConfig(backbone="pixels:8")


@dataclass(frozen=True)
class SyntheticPool:
    n: int
    dim: int
    shard_rows: int
    centres: int = 64
    spread: float = 0.35
    seed: int = 0

    def centre_vectors(self) -> np.ndarray:
        c = np.random.default_rng([self.seed, 0xC0FFEE]).normal(size=(self.centres, self.dim))
        return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)

    def shard_sizes(self) -> list[int]:
        full, rest = divmod(self.n, self.shard_rows)
        return [self.shard_rows] * full + ([rest] if rest else [])

    def _draw(self, rng: np.random.Generator, rows: int, centres: np.ndarray) -> np.ndarray:
        # Cluster sizes differ (a Zipf-like weight per centre), as web pools do.
        weights = 1.0 / np.arange(1, len(centres) + 1) ** 0.7
        which = rng.choice(len(centres), size=rows, p=weights / weights.sum())
        x = centres[which] + self.spread / np.sqrt(self.dim) * rng.normal(size=(rows, self.dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def shard_vectors(self, i: int, centres: np.ndarray | None = None) -> np.ndarray:
        centres = self.centre_vectors() if centres is None else centres
        return self._draw(np.random.default_rng([self.seed, 1, i]), self.shard_sizes()[i], centres)

    def query_vectors(self, name: str, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 2, *name.encode()])
        return self._draw(rng, count, self.centre_vectors())


def write_synthetic_embed_stage(stage_uri: str, pool: SyntheticPool, query_sets: dict[str, int]) -> dict:
    """Write and commit an embed stage holding ``pool`` and the named query sets (name -> size)."""
    centres = pool.centre_vectors()
    identity = {"model_id": MODEL_ID, "checksum": f"seed{pool.seed}", "dim": pool.dim}
    summaries = []
    for i, rows in enumerate(pool.shard_sizes()):
        x = pool.shard_vectors(i, centres)
        keys = [f"s{i:06d}-{j:06d}" for j in range(rows)]
        write_pool_shard(stage_uri, i, keys, f"pool-{i:06d}.tar", x)
        summary = {"part": f"pool-{i:06d}", "index": i, "images": rows, "failed": 0, **identity}
        mark_part_done(stage_uri, summary["part"], summary)
        summaries.append(summary)
    query_summaries = []
    for name, count in query_sets.items():
        q = pool.query_vectors(name, count)
        write_query_embeddings(stage_uri, name, [f"{name}-{j:05d}" for j in range(count)],
                               [str(j % 7) for j in range(count)], q)
        summary = {"part": f"queries-{name}", "name": name, "images": count, "failed": 0, **identity}
        mark_part_done(stage_uri, summary["part"], summary)
        query_summaries.append(summary)
    return finalize_embed(stage_uri, summaries, EMBED_CFG, f"synthetic-{pool.seed}", query_summaries)

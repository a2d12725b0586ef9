"""Dedup of a refresh against the images earlier versions kept, through their persisted indexes.

Every dedup stage writes ``index.parquet``, an index manifest with one row per dedup part of the
version and of each ancestor: the URIs of the part's ``meta.parquet`` (key, sha256), ``codes.npy``
(perceptual hashes), ``desc.npy`` (copy descriptors) and ``kept.npy`` (which rows survived).
Parts stay where their version wrote them (committed versions are immutable); a refresh copies
the parent's rows, never the files, and adds its own.

A new image that survived the within-batch dedup is removed as ``duplicate_of_previous_version``
when its sha256 equals a kept earlier image's, when its hash component holds one, or when its
nearest earlier descriptor is above the copy threshold; its representative is that earlier key.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.tables import read_table, write_table
from storage.uri import join, read_bytes
from tasks.dedup.config import DedupConfig
from tasks.dedup.hamming import hamming_neighbour_pairs, popcount_distance
from tasks.dedup.knn import build_index, copy_index
from tasks.dedup.parts import load_npy, part_uri, save_npy
from tasks.dedup.unionfind import UnionFind

INDEX_FILE = "index.parquet"
KEPT_FILE = "kept.npy"
PREVIOUS = "duplicate_of_previous_version"
INDEX_SCHEMA = pa.schema(
    [pa.field(name, pa.string(), nullable=False) for name in ("version", "part", "meta", "codes", "desc", "kept")]
)


@dataclass
class PreviousIndex:
    """Keys, sha256, hash codes and copy descriptors of the images earlier versions kept."""

    keys: np.ndarray
    sha: np.ndarray
    codes: np.ndarray
    descs: np.ndarray
    parts: int

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class PreviousMatches:
    """Per new image: matched (bool), the earlier key, the detector and its score."""

    matched: np.ndarray
    representative: np.ndarray
    detector: np.ndarray
    score: np.ndarray

    def counts(self) -> dict[str, int]:
        names, n = np.unique(self.detector[self.matched].astype(str), return_counts=True)
        return {str(k): int(v) for k, v in zip(names, n)}


def read_index_manifest(dedup_stage_uri: str) -> list[dict]:
    """Rows of a dedup stage's ``index.parquet`` (its parts and every ancestor's)."""
    return read_table(join(dedup_stage_uri, INDEX_FILE), schema=INDEX_SCHEMA).to_pylist()


def write_index_manifest(stage_uri: str, version: str, parts: list[str], kept: np.ndarray, offsets: np.ndarray,
                         previous_rows: list[dict]) -> int:
    """Write each part's ``kept.npy`` and the manifest (earlier rows first); returns its row count."""
    rows = list(previous_rows)
    for p, part in enumerate(parts):
        save_npy(part_uri(stage_uri, part, KEPT_FILE), kept[offsets[p]:offsets[p + 1]].astype(bool))
        rows.append({"version": version, "part": part, **{
            col: part_uri(stage_uri, part, name) for col, name in
            (("meta", "meta.parquet"), ("codes", "codes.npy"), ("desc", "desc.npy"), ("kept", KEPT_FILE))}})
    write_table(join(stage_uri, INDEX_FILE), rows, INDEX_SCHEMA)
    return len(rows)


def load_previous(rows: list[dict], code_bytes: int, dim: int) -> PreviousIndex:
    """The kept rows of every part the manifest lists, read in place."""
    keys, sha, codes, descs = [], [], [], []
    for row in rows:
        kept = load_npy(row["kept"])
        if not kept.any():
            continue
        with io.BytesIO(read_bytes(row["meta"])) as f:
            meta = pq.read_table(f, columns=["key", "sha256"])
        keys.extend(np.asarray(meta.column("key").to_pylist(), dtype=object)[kept])
        sha.extend(np.asarray(meta.column("sha256").to_pylist(), dtype=object)[kept])
        codes.append(load_npy(row["codes"])[kept])
        descs.append(load_npy(row["desc"])[kept].astype(np.float32))
    return PreviousIndex(
        np.asarray(keys, dtype=object), np.asarray(sha, dtype=object),
        np.concatenate(codes) if codes else np.zeros((0, code_bytes), np.uint8),
        np.concatenate(descs) if descs else np.zeros((0, dim), np.float32), len(rows),
    )


def match_previous(candidates: np.ndarray, sha: np.ndarray, codes: np.ndarray, descs: np.ndarray,
                   previous: PreviousIndex, cfg: DedupConfig, hash_name: str,
                   copy_threshold: float | None, embedder=None) -> PreviousMatches:
    """Which ``candidates`` rows duplicate an earlier kept image: sha256 first, then hash, then copy."""
    n = len(candidates)
    out = PreviousMatches(np.zeros(n, bool), np.full(n, None, dtype=object), np.full(n, None, dtype=object),
                          np.full(n, np.nan, dtype=np.float32))
    if not len(previous) or not candidates.any():
        return out

    def take(rows: np.ndarray, old: np.ndarray, detector: str, score: np.ndarray) -> None:
        out.matched[rows] = True
        out.representative[rows] = previous.keys[old]
        out.detector[rows] = detector
        out.score[rows] = score

    if cfg.exact:
        first_of = {s: i for i, s in reversed(list(enumerate(previous.sha.tolist())))}
        rows = np.array([i for i in np.nonzero(candidates)[0] if sha[i] in first_of], dtype=np.int64)
        if len(rows):
            take(rows, np.array([first_of[sha[i]] for i in rows]), "sha256", np.ones(len(rows), np.float32))

    if cfg.hash_method != "none" and codes.shape[1]:
        m = len(previous)
        rows = np.nonzero(candidates & ~out.matched)[0]
        both = np.concatenate([previous.codes, codes[rows]])
        uf = UnionFind(len(both))
        for a, b, _ in hamming_neighbour_pairs(both, cfg.hash_radius, cfg.hash_bucket_cap):
            uf.union(a, b)
        labels = uf.labels()[m:]  # a component's label is its smallest row: an earlier image if it holds one
        hit = labels < m
        if hit.any():
            old = labels[hit]
            take(rows[hit], old, hash_name, popcount_distance(codes[rows[hit]], previous.codes[old]).astype(np.float32))

    if copy_threshold is not None and descs.shape[1] and previous.descs.shape[1] == descs.shape[1]:
        rows = np.nonzero(candidates & ~out.matched)[0]
        if len(rows):
            m = len(previous)
            step = max(1, m // cfg.ivf_train_samples)
            index = copy_index(build_index(descs.shape[1], m, cfg, previous.descs[::step] if m > cfg.flat_max else None),
                               embedder, cfg)
            index.add(np.ascontiguousarray(previous.descs, dtype=np.float32))
            sims, nbrs = index.search(np.ascontiguousarray(descs[rows], dtype=np.float32), 1)
            hit = (nbrs[:, 0] >= 0) & (sims[:, 0] > copy_threshold)
            if hit.any():
                take(rows[hit], nbrs[hit, 0], "copy", np.minimum(sims[hit, 0], 1.0))
    return out

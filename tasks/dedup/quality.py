"""Precision and recall of a grouping on a planted-duplicate pool, per edit type.

A method's output is a component label per pool image. Predicted pairs are the pairs that share a
label; true pairs are the pairs that share a source photo. For edit type E, recall is the share
of (original, E-copy) pairs grouped together, and precision is the share of predicted pairs that
involve an E-copy whose two images really share a source. The ``all`` row counts every pair, so
false merges between distinct photos show up there.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tasks.dedup.planted import PlantedImage


def _pairs_within(labels: np.ndarray) -> list[tuple[int, int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels.tolist()):
        groups[lab].append(i)
    out = []
    for members in groups.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                out.append((members[a], members[b]))
    return out


def pair_metrics(items: list[PlantedImage], labels: np.ndarray) -> dict[str, dict[str, float]]:
    """``edit -> {precision, recall, tp, fp, fn}`` plus an ``all`` row; precision is 1.0 when nothing is predicted."""
    labels = np.asarray(labels)
    if len(labels) != len(items):
        raise ValueError(f"{len(labels)} labels for {len(items)} images")
    original_of = {it.source: i for i, it in enumerate(items) if it.edit == "original"}
    predicted = _pairs_within(labels)
    edits = sorted({it.edit for it in items} - {"original"})
    out: dict[str, dict[str, float]] = {}
    for edit in edits + ["all"]:
        def involves(i: int, j: int) -> bool:
            return edit == "all" or items[i].edit == edit or items[j].edit == edit

        tp = fp = 0
        for i, j in predicted:
            if involves(i, j):
                if items[i].source == items[j].source:
                    tp += 1
                else:
                    fp += 1
        if edit == "all":
            by_source: dict[str, int] = defaultdict(int)
            for it in items:
                by_source[it.source] += 1
            n_true = sum(c * (c - 1) // 2 for c in by_source.values())
            found = tp
        else:
            copies = [i for i, it in enumerate(items) if it.edit == edit]
            n_true = len(copies)
            found = sum(labels[i] == labels[original_of[items[i].source]] for i in copies)
        out[edit] = {
            "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": found / n_true if n_true else 1.0,
            "tp": tp, "fp": fp, "fn": n_true - found,
        }
    return out


def metrics_markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """A markdown table: one row per edit type, precision/recall per method."""
    methods = list(results)
    edits = list(next(iter(results.values())))
    head = "| edit | " + " | ".join(f"{m} P | {m} R" for m in methods) + " |"
    sep = "|---|" + "---|---|" * len(methods)
    rows = [head, sep]
    for edit in edits:
        cells = " | ".join(f"{results[m][edit]['precision']:.2f} | {results[m][edit]['recall']:.2f}" for m in methods)
        rows.append(f"| {edit} | {cells} |")
    return "\n".join(rows)


def stage_labels(stage_uri: str, items: list[PlantedImage]) -> np.ndarray:
    """Component label per planted item from a committed dedup stage (its group, else itself)."""
    from storage.tables import read_table
    from storage.uri import join

    keep = read_table(join(stage_uri, "keep.parquet"))
    group = dict(zip(keep.column("key").to_pylist(), keep.column("group_id").to_pylist()))
    return np.array([group[it.key] if group[it.key] is not None else -1 - i for i, it in enumerate(items)])


METHODS = {
    "sha256": {"hash_method": "none", "copy_model": None},
    "phash": {"hash_method": "phash", "hash_radius": 8, "copy_model": None, "exact": False},
    "pca-hash": {"hash_method": "pca", "hash_radius": 8, "copy_model": None, "exact": False},
    "copy (builtin:dct)": {"hash_method": "none", "exact": False},
    "all (default)": {"hash_radius": 8},
}


def evaluate_methods(crawl_stage_uri: str, work_uri: str, items: list[PlantedImage],
                     methods: dict[str, dict] = METHODS) -> dict[str, dict[str, dict[str, float]]]:
    """Run the dedup stage once per method on a planted crawl stage; metrics per method and edit."""
    from storage.uri import join
    from tasks.dedup.config import DedupConfig
    from tasks.dedup.embedder import load_copy_embedder
    from tasks.dedup.stage import run_dedup

    out = {}
    for i, (name, overrides) in enumerate(methods.items()):
        cfg = DedupConfig(**overrides)
        stage = join(work_uri, f"dedup-{i}")
        run_dedup(crawl_stage_uri, stage, cfg, load_copy_embedder(cfg))
        out[name] = pair_metrics(items, stage_labels(stage, items))
    return out

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


def originals_kept(items: list[PlantedImage], labels: np.ndarray, kept: np.ndarray) -> dict:
    """How often a planted group keeps its original: ``{groups, kept, share, survivors}``.

    A group counts when the original's component holds at least one of its copies (a copy nobody
    found leaves nothing to choose). It keeps its original when a surviving member of that component
    is the original or its byte-identical copy; ``survivors`` counts the edit of every other choice.
    """
    labels, kept = np.asarray(labels), np.asarray(kept, dtype=bool)
    if len(labels) != len(items) or len(kept) != len(items):
        raise ValueError(f"{len(labels)} labels and {len(kept)} keep flags for {len(items)} images")
    groups = hits = 0
    survivors: dict[str, int] = defaultdict(int)
    for i, it in enumerate(items):
        if it.edit != "original":
            continue
        members = np.nonzero(labels == labels[i])[0]
        if not any(items[j].source == it.source for j in members if j != i):
            continue
        groups += 1
        alive = [j for j in members.tolist() if kept[j]]
        if any(items[j].source == it.source and items[j].edit in ("original", "exact") for j in alive):
            hits += 1
        else:
            for j in alive:
                survivors[items[j].edit if items[j].source == it.source else "another photo"] += 1
    return {"groups": groups, "kept": hits, "share": hits / groups if groups else 1.0, "survivors": dict(survivors)}


def stage_kept(stage_uri: str, items: list[PlantedImage]) -> np.ndarray:
    """Whether each planted item survived a committed dedup stage."""
    from storage.tables import read_table
    from storage.uri import join

    keep = read_table(join(stage_uri, "keep.parquet"))
    flag = dict(zip(keep.column("key").to_pylist(), keep.column("kept").to_pylist()))
    return np.array([bool(flag[it.key]) for it in items])


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
                     methods: dict[str, dict] = METHODS, kept: dict | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Run the dedup stage once per method on a planted crawl stage; metrics per method and edit.

    With ``kept`` (a dict), each method's :func:`originals_kept` figures are stored in it by name.
    """
    from storage.uri import join
    from tasks.dedup.config import DedupConfig
    from tasks.dedup.embedder import load_copy_embedder
    from tasks.dedup.stage import run_dedup

    out = {}
    for i, (name, overrides) in enumerate(methods.items()):
        cfg = DedupConfig(**overrides)
        stage = join(work_uri, f"dedup-{i}")
        run_dedup(crawl_stage_uri, stage, cfg, load_copy_embedder(cfg))
        labels = stage_labels(stage, items)
        out[name] = pair_metrics(items, labels)
        if kept is not None:
            kept[name] = originals_kept(items, labels, stage_kept(stage, items))
    return out

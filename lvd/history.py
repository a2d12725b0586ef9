"""`lvd info {root}/{dataset}` and `lvd diff`: a dataset's versions and what changed between two.

Everything is read from commit records and manifests, so it works on any committed version.
"""
from __future__ import annotations

from storage.commit import StageNotCommitted, read_commit, read_latest, stage_uri
from storage.shards import read_manifest
from storage.uri import basename, join, parent
from storage.versions import list_versions, shards_stage_of, split_dataset_uri

BATCH_DUPLICATES = ("sha256", "phash", "pca-hash", "copy")
EARLIER_DUPLICATES = "duplicate_of_previous_version"
HISTORY_COLUMNS = ("version", "parent", "committed", "new_inputs", "crawled", "added", "dup_batch", "dup_earlier",
                   "curated", "new_bytes", "total_bytes")


def _counts(root: str, dataset: str, version: str, stage: str) -> dict:
    try:
        return read_commit(stage_uri(root, dataset, version, stage))
    except StageNotCommitted:
        return {}


def version_summary(root: str, dataset: str, version: str) -> dict:
    """One history row: lineage, inputs, crawl, dedup and shard counts of a version."""
    inputs = _counts(root, dataset, version, "inputs")
    crawl = _counts(root, dataset, version, "crawl").get("counts", {})
    dedup = _counts(root, dataset, version, "dedup").get("counts", {})
    shards = _counts(root, dataset, version, "shards")
    sc = shards.get("counts", {})
    return {
        "version": version,
        "parent": (inputs.get("extra") or {}).get("parent"),
        "committed": shards.get("committed_at"),
        "new_inputs": (inputs.get("counts") or {}).get("new_inputs"),
        "crawled": crawl.get("samples"),
        "added": sc.get("added_samples", sc.get("samples")),
        "dup_batch": sum(dedup.get(f"removed_{r}", 0) for r in BATCH_DUPLICATES) if dedup else None,
        "dup_earlier": dedup.get(f"removed_{EARLIER_DUPLICATES}", 0) if dedup else None,
        "curated": sc.get("samples"),
        "new_bytes": sc.get("added_bytes", sc.get("bytes")),
        "total_bytes": sc.get("bytes"),
    }


def dataset_history(dataset_uri: str) -> tuple[list[dict], str | None]:
    """Every committed version of ``{root}/{dataset}``, oldest first, and the one ``latest`` names."""
    root, dataset = split_dataset_uri(dataset_uri)
    try:
        latest = read_latest(root, dataset)
    except StageNotCommitted:
        latest = None
    return [version_summary(root, dataset, v) for v in list_versions(root, dataset)], latest


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_history(dataset_uri: str, rows: list[dict], latest: str | None) -> str:
    def cell(v) -> str:
        return "-" if v is None else str(v)

    lines = [f"dataset      {dataset_uri}", f"latest       {latest or '(none published)'}", f"versions     {len(rows)}",
             ""]
    body = [list(HISTORY_COLUMNS)] + [[cell(r[c]) + ("*" if c == "version" and r[c] == latest else "")
                                       for c in HISTORY_COLUMNS] for r in rows]
    lines += _table(body)
    lines.append("")
    lines.append("dup_batch: removed as duplicates within the version's new images; dup_earlier: duplicates of "
                 "images earlier versions kept; * latest")
    return "\n".join(lines)


def diff_versions(a_uri: str, b_uri: str) -> dict:
    """Shards reused, added and removed from version A to version B (by URL), and their samples."""
    a, b = shards_stage_of(a_uri), shards_stage_of(b_uri)
    rows_a, rows_b = read_manifest(a).to_pylist(), read_manifest(b).to_pylist()
    urls_a, urls_b = {r["url"]: r for r in rows_a}, {r["url"]: r for r in rows_b}
    added = [r for u, r in urls_b.items() if u not in urls_a]
    removed = [r for u, r in urls_a.items() if u not in urls_b]
    return {
        "a": basename(parent(a)), "b": basename(parent(b)),
        "shards_reused": sum(1 for u in urls_b if u in urls_a),
        "shards_added": [r["url"] for r in added], "shards_removed": [r["url"] for r in removed],
        "samples_a": sum(r["nsamples"] for r in rows_a), "samples_b": sum(r["nsamples"] for r in rows_b),
        "samples_added": sum(r["nsamples"] for r in added), "samples_removed": sum(r["nsamples"] for r in removed),
        "bytes_added": sum(r["nbytes"] for r in added), "bytes_removed": sum(r["nbytes"] for r in removed),
    }


def format_diff(d: dict) -> str:
    lines = [
        f"{d['a']} -> {d['b']}",
        f"shards    reused {d['shards_reused']}  added {len(d['shards_added'])}  removed {len(d['shards_removed'])}",
        f"samples   {d['samples_a']} -> {d['samples_b']}  added {d['samples_added']}  removed {d['samples_removed']}",
        f"bytes     added {d['bytes_added']}  removed {d['bytes_removed']}",
    ]
    lines += [f"  + {u}" for u in d["shards_added"]] + [f"  - {u}" for u in d["shards_removed"]]
    return "\n".join(lines)


def diff_arguments(args: list[str]) -> tuple[str, str]:
    """``A B`` (two version URIs) or ``DATASET A B`` (a dataset URI and two version names) -> two URIs."""
    if len(args) == 2:
        return args[0], args[1]
    if len(args) == 3:
        return join(args[0], args[1]), join(args[0], args[2])
    raise ValueError("lvd diff takes two version URIs, or a dataset URI and two version names")

"""`lvd info {root}/{dataset}` and `lvd diff`: a dataset's versions and what changed between two (by content).

Everything is read from commit records and manifests, so it works on any committed version.
"""
from __future__ import annotations

import hashlib
from collections import Counter

import pyarrow.parquet as pq

from storage.commit import StageNotCommitted, read_commit, read_latest, stage_uri
from storage.shards import iter_samples, read_manifest
from storage.uri import basename, exists, join, open_input, parent
from storage.versions import list_versions, shards_stage_of, split_dataset_uri

BATCH_DUPLICATES = ("sha256", "phash", "pca-hash", "copy")
EARLIER_DUPLICATES = "duplicate_of_previous_version"
SAMPLES_FILE = "samples.parquet"  # the shards stage's per-sample table (tasks/shard/write.py)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
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


def _digests_in_folder(folder: str, names: set[str]) -> dict[str, list[str]]:
    """shard file name -> its samples' image sha256, for ``names``, from ``folder``'s samples.parquet (two
    columns, only those shards' rows: a pool-sized table is never read whole)."""
    uri = join(folder, SAMPLES_FILE)
    if not names or not exists(uri):
        return {}
    with open_input(uri) as f:
        table = pq.read_table(f, columns=["shard", "sha256"], filters=[("shard", "in", sorted(names))])
    out: dict[str, list[str]] = {}
    for shard, digest in zip(table.column("shard").to_pylist(), table.column("sha256").to_pylist()):
        out.setdefault(shard, []).append(digest)
    return out


def _read_digests(url: str) -> list[str]:
    """A shard's samples' digests the slow way: read it and hash each image (what samples.parquet holds)."""
    out = []
    for _key, fields in iter_samples(url):
        image = next((fields[ext] for ext in IMAGE_EXTS if ext in fields), None)
        data = image if image is not None else b"".join(fields[k] for k in sorted(fields))
        out.append(hashlib.sha256(data).hexdigest())
    return out


def _sample_digests(shards: list[dict]) -> Counter:
    """Content digests (sha256 of the image bytes) of the samples of some manifest rows: from the
    samples.parquet beside each shard (a refresh's carried rows point into the parent's folder, which
    holds theirs), else by reading the shard."""
    by_folder: dict[str, set[str]] = {}
    for r in shards:
        by_folder.setdefault(parent(r["url"]), set()).add(basename(r["url"]))
    tables = {folder: _digests_in_folder(folder, names) for folder, names in by_folder.items()}
    digests: Counter = Counter()
    for r in shards:
        found = tables[parent(r["url"])].get(basename(r["url"]))
        digests.update(found if found is not None and len(found) == r["nsamples"] else _read_digests(r["url"]))
    return digests


def diff_versions(a_uri: str, b_uri: str) -> dict:
    """What changed from version A to version B, by content, not by where it is stored.

    Shards are matched by their sha256 (a byte-identical shard under another URL is reused), samples by
    the sha256 of their image; only the shards that differ are opened to compare their samples, so a
    sample that moved between shards is neither added nor removed."""
    a, b = shards_stage_of(a_uri), shards_stage_of(b_uri)
    rows_a, rows_b = read_manifest(a).to_pylist(), read_manifest(b).to_pylist()
    left = Counter(r["sha256"] for r in rows_a)
    added, reused = [], 0
    for r in rows_b:
        if left[r["sha256"]] > 0:
            left[r["sha256"]] -= 1
            reused += 1
        else:
            added.append(r)
    right = Counter(r["sha256"] for r in rows_b)
    removed = []
    for r in rows_a:
        if right[r["sha256"]] > 0:
            right[r["sha256"]] -= 1
        else:
            removed.append(r)
    samples_new, samples_old = _sample_digests(added), _sample_digests(removed)
    return {
        "a": basename(parent(a)), "b": basename(parent(b)),
        "shards_reused": reused,
        "shards_added": [r["url"] for r in added], "shards_removed": [r["url"] for r in removed],
        "samples_a": sum(r["nsamples"] for r in rows_a), "samples_b": sum(r["nsamples"] for r in rows_b),
        "samples_added": sum((samples_new - samples_old).values()),
        "samples_removed": sum((samples_old - samples_new).values()),
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

"""Versions of a dataset: their lineage, the crawl inputs each consumed, and where their shards are.

A version lives at ``{root}/{dataset}/{version}/``. Its ``inputs`` stage is committed first:
``inputs.parquet`` lists every crawl input the version and its ancestors consumed (URI, size,
content fingerprint, the version that consumed it), and its ``_COMMITTED.json`` names the parent,
the ancestors and the crawl part numbers the version used, so keys and shard names stay unique
across a dataset's versions. A refresh crawls only inputs whose fingerprint no ancestor consumed.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from storage.commit import (
    COMMIT_FILE,
    LATEST_FILE,
    StageNotCommitted,
    commit_stage,
    read_commit,
    read_latest,
    stage_uri,
)
from storage.tables import read_table, write_table
from storage.uri import basename, exists, join, open_fs, open_input, parent
from lvd.errors import LvdError

INPUTS_STAGE = "inputs"
INPUTS_FILE = "inputs.parquet"
# Stages every curated version commits (safety is optional and per run).
CORE_STAGES = ("inputs", "crawl", "dedup", "embed", "retrieve", "shards")
INPUTS_SCHEMA = pa.schema(
    [
        pa.field("version", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
    ]
)


class RefreshRefused(LvdError, ValueError):
    """A refresh that cannot build on the version it names; nothing has been written."""


class NoNewInputs(RefreshRefused):
    """Every input was consumed by an earlier version."""


class VersionIncomplete(StageNotCommitted):
    """A version that some stage has not committed, so nothing may build on it."""


def input_fingerprint(uri: str) -> dict:
    """``{uri, size, fingerprint}``: the object store's ETag where it has one, else the sha256 of the bytes."""
    fs, path = open_fs(uri)
    info = fs.info(path)
    etag = info.get("ETag") or info.get("etag")
    if etag:
        fingerprint = f"etag:{str(etag).strip(chr(34))}"
    else:
        digest = hashlib.sha256()
        with open_input(uri) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        fingerprint = f"sha256:{digest.hexdigest()}"
    return {"uri": uri, "size": int(info.get("size") or 0), "fingerprint": fingerprint}


def version_uri(root: str, dataset: str, version: str) -> str:
    return parent(stage_uri(root, dataset, version, INPUTS_STAGE))


def missing_stages(root: str, dataset: str, version: str, stages=CORE_STAGES) -> list[str]:
    """Stages of ``version`` without a commit marker, in pipeline order."""
    return [s for s in stages if not exists(join(stage_uri(root, dataset, version, s), COMMIT_FILE))]


def require_complete(root: str, dataset: str, version: str, stages=CORE_STAGES) -> None:
    """VersionIncomplete naming the version and its first uncommitted stage, unless all are committed."""
    missing = missing_stages(root, dataset, version, stages)
    if missing:
        raise VersionIncomplete(
            f"version {version!r} of dataset {dataset!r} is not fully committed: stage {missing[0]!r} has no "
            f"{COMMIT_FILE} (uncommitted: {', '.join(missing)}); finish or rerun that version before refreshing from it"
        )


def read_inputs(inputs_stage_uri: str) -> list[dict]:
    """Every input consumed by the version and its ancestors (committed ``inputs`` stage only)."""
    read_commit(inputs_stage_uri)
    return read_table(join(inputs_stage_uri, INPUTS_FILE), schema=INPUTS_SCHEMA).to_pylist()


def new_inputs(candidates: list[dict], consumed: list[dict]) -> list[dict]:
    """The candidates whose content no earlier version consumed (first occurrence of each fingerprint)."""
    seen = {row["fingerprint"] for row in consumed}
    out = []
    for row in candidates:
        if row["fingerprint"] not in seen:
            seen.add(row["fingerprint"])
            out.append(row)
    return out


def commit_inputs(stage: str, *, version: str, consumed: list[dict], new: list[dict], lineage: dict,
                  config_digest: str, input_digest: str) -> dict:
    """Write ``inputs.parquet`` (the parent's list carried forward plus ``new``) and commit the stage."""
    rows = [{k: r[k] for k in INPUTS_SCHEMA.names} for r in consumed]
    rows += [{"version": version, "uri": r["uri"], "size": r["size"], "fingerprint": r["fingerprint"]} for r in new]
    write_table(join(stage, INPUTS_FILE), rows, INPUTS_SCHEMA)
    return commit_stage(stage, stage=INPUTS_STAGE, config_digest=config_digest, input_digest=input_digest,
                        counts={"new_inputs": len(new), "inputs_total": len(rows)}, extra=lineage)


def lineage_of(root: str, dataset: str, version: str) -> dict:
    """``{parent, ancestors, first_part, next_part, next_shard}`` recorded by the version's inputs stage."""
    return read_commit(stage_uri(root, dataset, version, INPUTS_STAGE)).get("extra", {})


def list_versions(root: str, dataset: str) -> list[str]:
    """Versions of a dataset that committed an inputs or shards stage, oldest commit first."""
    fs, path = open_fs(join(root, dataset))
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") != "directory" or name.startswith("."):
            continue
        for stage in (INPUTS_STAGE, "shards"):
            try:
                found.append((read_commit(stage_uri(root, dataset, name, stage))["committed_at"], name))
                break
            except (StageNotCommitted, ValueError):
                continue
    return [name for _, name in sorted(found)]


def is_dataset_uri(uri: str) -> bool:
    """Whether ``uri`` is ``{root}/{dataset}``: it holds a published ``latest``."""
    return exists(join(uri, LATEST_FILE))


def split_dataset_uri(uri: str) -> tuple[str, str]:
    """``{root}/{dataset}`` -> ``(root, dataset)``."""
    uri = uri.rstrip("/")
    return parent(uri), basename(uri)


def shards_stage_of(uri: str) -> str:
    """The committed shards stage named by a dataset URI (following ``latest``), a version URI or a stage URI."""
    uri = uri.rstrip("/")
    if is_dataset_uri(uri):
        root, dataset = split_dataset_uri(uri)
        return stage_uri(root, dataset, read_latest(root, dataset), "shards")
    if exists(join(uri, "shards", COMMIT_FILE)):
        return join(uri, "shards")
    if exists(join(uri, COMMIT_FILE)):
        return uri
    raise StageNotCommitted(
        f"{uri} is neither a dataset (no {LATEST_FILE}), nor a version with committed shards, nor a committed stage"
    )

"""The commit protocol: a stage's output counts only once ``_COMMITTED.json`` exists.

Layout under ``{root}/{dataset}/{version}/{stage}/``:

* data files (shards, tables), each written atomically;
* ``_parts/{part}.json`` for every finished unit of work, written after that part's files,
  so an interrupted run can reuse finished parts;
* ``_STARTED.json``: the config and input digests of the run that produced the parts, so the
  output of a run with other settings is discarded instead of silently mixed in;
* ``_COMMITTED.json``, written last: stage, digests, counts, code version, time, total bytes,
  and ``timings`` (how long steps took), which like the time and code version is left out of
  :func:`digest_of_commit`, so identical output keeps its digest however fast it was made.

Readers call :func:`read_commit` (or :func:`require_committed`) before touching a stage;
an uncommitted stage raises :class:`StageNotCommitted`. A committed version is immutable:
rerunning it with the same config and input is a skip, with different ones an error.
``{root}/{dataset}/latest`` names the newest version whose stages are all committed.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
from dataclasses import dataclass, field

from pydantic import BaseModel

from storage.uri import (
    abort_multipart_uploads,
    file_size,
    join,
    read_bytes,
    remove,
    remove_temp_files,
    walk_files,
    write_bytes_atomic,
)
from lvd.errors import LvdError

COMMIT_FILE = "_COMMITTED.json"
STARTED_FILE = "_STARTED.json"
CONFIG_FILE = "config.json"  # the stage's settings, beside its outputs
PARTS_DIR = "_parts"
LATEST_FILE = "latest"
MANIFEST_FILE = "manifest.parquet"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")


class StageNotCommitted(LvdError):
    """A stage was read (or published) before its ``_COMMITTED.json`` existed."""


class StageConflict(LvdError):
    """A committed stage was asked to run again with a different config or input."""


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value) or value in (".", ".."):
        raise ValueError(
            f"{kind} {value!r} is not a valid name: use letters, digits, '_', '-', '.', '=' "
            "and start with a letter or digit"
        )
    return value


def stage_uri(root: str, dataset: str, version: str, stage: str) -> str:
    """``{root}/{dataset}/{version}/{stage}``, with every name checked."""
    _check_name("dataset", dataset)
    _check_name("version", version)
    _check_name("stage", stage)
    return join(root, dataset, version, stage)


def canonical_json(value: object) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def config_digest(cfg: BaseModel | dict) -> str:
    """Stable sha256 (hex) of a config's canonical JSON; field order and key order do not matter."""
    if isinstance(cfg, BaseModel):
        value = cfg.model_dump(mode="json")
    elif isinstance(cfg, dict):
        value = cfg
    else:
        raise TypeError(f"config_digest needs a pydantic model or dict, got {type(cfg).__name__}")
    try:
        return hashlib.sha256(canonical_json(value)).hexdigest()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"config is not JSON-serialisable for hashing: {exc}") from exc


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``lvd`` package version, plus the git commit (``+dirty`` with local changes) when known."""
    try:
        version = importlib.metadata.version("lvd")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if os.environ.get("LVD_CODE_VERSION"):
        return os.environ["LVD_CODE_VERSION"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{sha}{'.dirty' if dirty else ''}" if sha else version


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_commit(stage_uri: str) -> dict:
    """Contents of the stage's ``_COMMITTED.json``; StageNotCommitted if it has none."""
    marker = join(stage_uri, COMMIT_FILE)
    try:
        raw = read_bytes(marker)
    except FileNotFoundError:
        raise StageNotCommitted(
            f"stage {stage_uri} is not committed (no {COMMIT_FILE}): it never ran or did not finish; "
            "run that stage before reading it"
        ) from None
    try:
        commit = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StageNotCommitted(f"stage {stage_uri} has a corrupt {COMMIT_FILE}: {exc}") from exc
    if not isinstance(commit, dict) or "stage" not in commit:
        raise StageNotCommitted(f"stage {stage_uri} has a {COMMIT_FILE} that is not a commit record")
    return commit


def require_committed(stage_uri: str) -> dict:
    """Alias of :func:`read_commit` that reads well at the top of a consumer."""
    return read_commit(stage_uri)


def is_committed(stage_uri: str, config_digest: str | None = None, input_digest: str | None = None) -> bool:
    """True if the stage is committed and (when given) was made from these config and input digests."""
    try:
        commit = read_commit(stage_uri)
    except StageNotCommitted:
        return False
    if config_digest is not None and commit.get("config_digest") != config_digest:
        return False
    if input_digest is not None and commit.get("input_digest") != input_digest:
        return False
    return True


def _part_uri(stage_uri: str, part: str) -> str:
    return join(stage_uri, PARTS_DIR, f"{_check_name('part', part)}.json")


def part_done(stage_uri: str, part: str) -> dict | None:
    """Summary stored by :func:`mark_part_done` for this part, or None if it has not finished."""
    try:
        raw = read_bytes(_part_uri(stage_uri, part))
    except FileNotFoundError:
        return None
    return json.loads(raw)["summary"]


def mark_part_done(stage_uri: str, part: str, summary: dict) -> None:
    """Record that a part's files are all written; call only after the last of them."""
    if not isinstance(summary, dict):
        raise TypeError(f"part summary must be a dict, got {type(summary).__name__}")
    record = {"part": part, "finished_at": _now(), "summary": summary}
    write_bytes_atomic(_part_uri(stage_uri, part), canonical_json(record))


def done_parts(stage_uri: str) -> dict[str, dict]:
    """All finished parts of the stage: part name -> summary."""
    out = {}
    for rel in walk_files(join(stage_uri, PARTS_DIR)):
        if "/" in rel or not rel.endswith(".json"):
            continue
        name = rel[: -len(".json")]
        summary = part_done(stage_uri, name)
        if summary is not None:
            out[name] = summary
    return out


@dataclass
class StagePlan:
    """What a (re)run of a stage has to do."""

    stage_uri: str
    skip: bool
    commit: dict | None = None
    done: dict[str, dict] = field(default_factory=dict)

    def is_done(self, part: str) -> bool:
        return part in self.done


def begin_stage(
    stage_uri: str, *, stage: str, config_digest: str, input_digest: str, config: object = None
) -> StagePlan:
    """Decide how to run a stage: skip it, resume its finished parts, or start clean.

    * committed with the same digests: ``skip`` (nothing to do);
    * committed with other digests: :class:`StageConflict` (versions are immutable);
    * uncommitted, parts from a run with the same digests: those parts are reused;
    * uncommitted, left by a run with other digests: its files and parts are removed.

    A stage that runs first loses what killed writers left in it: local temp files and open S3
    multipart uploads under its prefix.

    ``config`` (the stage's settings) is written as ``config.json`` only once the decision is to
    run, after any clean start: a skipped or refused stage is never touched, and a stage that
    starts clean still has its settings beside its outputs when it commits.
    """
    _check_name("stage", stage)
    try:
        commit = read_commit(stage_uri)
    except StageNotCommitted:
        commit = None
    if commit is not None:
        if commit.get("config_digest") == config_digest and commit.get("input_digest") == input_digest:
            return StagePlan(stage_uri, skip=True, commit=commit, done=done_parts(stage_uri))
        raise StageConflict(
            f"stage {stage_uri} is already committed with config {commit.get('config_digest')} and input "
            f"{commit.get('input_digest')}; this run has config {config_digest} and input {input_digest}. "
            "A committed version is immutable: write to a new version"
        )
    # leftovers of writers killed mid-write: temp files (local) and open multipart uploads (S3)
    remove_temp_files(stage_uri)
    abort_multipart_uploads(stage_uri)
    started_uri = join(stage_uri, STARTED_FILE)
    started = {"stage": stage, "config_digest": config_digest, "input_digest": input_digest}
    previous = None
    try:
        previous = json.loads(read_bytes(started_uri))
    except (FileNotFoundError, json.JSONDecodeError):
        previous = None
    same = previous is not None and all(previous.get(k) == v for k, v in started.items())
    if not same:
        if previous is not None:
            # everything here came from a run with other settings: none of it may leak into this one
            remove(stage_uri, recursive=True)
        else:
            remove(join(stage_uri, PARTS_DIR), recursive=True)
        write_bytes_atomic(started_uri, canonical_json(dict(started, started_at=_now())))
        _write_config(stage_uri, config)
        return StagePlan(stage_uri, skip=False)
    _write_config(stage_uri, config)
    return StagePlan(stage_uri, skip=False, done=done_parts(stage_uri))


def _write_config(stage_uri: str, config: object) -> None:
    """The settings beside the outputs (`lvd info` and audits read them)."""
    if config is None:
        return
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    write_bytes_atomic(join(stage_uri, CONFIG_FILE), canonical_json(data))


def commit_stage(
    stage_uri: str,
    *,
    stage: str,
    config_digest: str,
    input_digest: str,
    counts: dict,
    extra: dict | None = None,
    require_parts: list[str] | None = None,
    timings: dict | None = None,
) -> dict:
    """Write ``_COMMITTED.json`` last and return it.

    ``require_parts`` names parts that must all be marked done first, so a stage with a
    missing part can never be committed. ``extra`` says what the stage holds and goes into
    :func:`digest_of_commit`; ``timings`` (seconds, rates: anything that differs between two runs
    of the same data) is recorded beside it and left out of the digest.
    """
    _check_name("stage", stage)
    if not isinstance(counts, dict):
        raise TypeError(f"counts must be a dict, got {type(counts).__name__}")
    if require_parts:
        missing = [p for p in require_parts if part_done(stage_uri, p) is None]
        if missing:
            raise StageNotCommitted(
                f"refusing to commit {stage_uri}: {len(missing)} of {len(require_parts)} parts "
                f"are not done ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
            )
    remove_temp_files(stage_uri)  # a killed writer's temp file is no output of the stage
    files = {
        rel: size
        for rel, size in walk_files(stage_uri).items()
        if rel not in (COMMIT_FILE, STARTED_FILE) and not rel.startswith(PARTS_DIR + "/")
    }
    if MANIFEST_FILE in files:
        _check_manifest_shards(stage_uri, files)
    record = {
        "stage": stage,
        "config_digest": config_digest,
        "input_digest": input_digest,
        "counts": counts,
        "extra": extra or {},
        "timings": timings or {},
        "code_version": code_version(),
        "committed_at": _now(),
        "files": len(files),
        "total_bytes": sum(files.values()),
    }
    write_bytes_atomic(join(stage_uri, COMMIT_FILE), canonical_json(record))
    return record


# Fields of a commit record that say when, by which build and how fast it was written, not what it holds.
_CIRCUMSTANTIAL = ("committed_at", "code_version", "timings")


def _check_manifest_shards(stage_uri: str, files: dict[str, int]) -> None:
    """Refuse to commit a stage whose manifest lists a shard that is missing or of another size."""
    from storage.tables import read_table

    prefix = stage_uri.rstrip("/") + "/"
    bad = []
    manifest = read_table(join(stage_uri, MANIFEST_FILE))
    if not {"url", "nbytes"} <= set(manifest.column_names):
        return
    for row in manifest.select(["url", "nbytes"]).to_pylist():
        url = row["url"]
        if url.startswith(prefix):
            size = files.get(url[len(prefix):])
        else:
            try:
                size = file_size(url)
            except FileNotFoundError:
                size = None
        if size != row["nbytes"]:
            bad.append(f"{url} ({'missing' if size is None else f'{size} bytes'}, manifest {row['nbytes']})")
    if bad:
        raise StageNotCommitted(
            f"refusing to commit {stage_uri}: {len(bad)} shards in its manifest are missing or differ: "
            + "; ".join(bad[:3])
        )


def digest_of_commit(stage_uri: str) -> str:
    """Input digest for the next stage: sha256 of what this stage's commit says it holds.

    The time, code version and timings are left out, so recommitting identical output (after an
    interrupted run, with a newer build, on a faster machine) does not invalidate the stages downstream.
    """
    record = read_commit(stage_uri)
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k not in _CIRCUMSTANTIAL})).hexdigest()


def latest_uri(root: str, dataset: str) -> str:
    return join(root, _check_name("dataset", dataset), LATEST_FILE)


def publish_latest(root: str, dataset: str, version: str, stages: list[str]) -> dict:
    """Point ``{root}/{dataset}/latest`` at ``version`` once every listed stage is committed."""
    if not stages:
        raise ValueError("publish_latest needs the list of stages the version must have committed")
    commits = {s: read_commit(stage_uri(root, dataset, version, s)) for s in stages}
    record = {
        "version": version,
        "stages": {s: digest_of_commit(stage_uri(root, dataset, version, s)) for s in commits},
        "published_at": _now(),
    }
    write_bytes_atomic(latest_uri(root, dataset), canonical_json(record))
    return record


def resolve_version(root: str, dataset: str, version: str) -> str:
    """``version`` itself, or the published one when it is ``"latest"``."""
    return read_latest(root, dataset) if version == LATEST_FILE else _check_name("version", version)


def read_latest(root: str, dataset: str) -> str:
    """Version named by ``{root}/{dataset}/latest``; StageNotCommitted if none was published."""
    uri = latest_uri(root, dataset)
    try:
        record = json.loads(read_bytes(uri))
    except FileNotFoundError:
        raise StageNotCommitted(
            f"dataset {dataset} under {root} has no published version ({uri} is missing)"
        ) from None
    return record["version"]

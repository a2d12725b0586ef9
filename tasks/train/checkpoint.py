"""Training checkpoints with torch.distributed.checkpoint, written so a killed run resumes exactly.

Layout under ``{run}/checkpoints/``::

    step-000100/  .metadata, __0_0.distcp ...   model (student, teacher, heads, centers) + optimizer
                  extra-rank0.pt ...            per-rank: RNG states
                  _COMPLETE.json                written last: step, world size, files with size and
                                                sha256 (checked on every load), and the run's
                                                own meta (training phase, data position)

Model and optimizer go through ``get_state_dict``/``set_state_dict`` (full, unsharded keys), so
a checkpoint written by N processes loads in M. Nothing is visible under ``step-*`` without its
``_COMPLETE.json``: locally the directory is written under a hidden temp name and renamed; on
S3 every rank writes into a local spool, uploads its own files, and rank 0 puts the marker
after a barrier. A reader only considers directories that have the marker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from storage import uri as su

MARKER = "_COMPLETE.json"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_CHUNK = 1 << 20
_log = logging.getLogger(__name__)
T = TypeVar("T")


class CheckpointDamaged(su.StorageError):
    """A checkpoint file is missing, or its size or sha256 differs from the one its marker recorded."""


def file_digest(path: str) -> dict[str, Any]:
    """Size and sha256 of a local file, read in chunks so large shards never sit in memory."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def _gather(mine: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized():
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        return everyone
    return [mine]


@dataclass(frozen=True)
class CheckpointRef:
    """A complete checkpoint: its URI and training step (steps done when it was written)."""

    uri: str
    step: int


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _broadcast_str(value: str) -> str:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def checkpoints_uri(run_uri: str) -> str:
    return su.join(run_uri, "checkpoints")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def rng_state() -> dict[str, Any]:
    """Every RNG the step consumes (stochastic depth uses torch's global generator)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_uri: str) -> list[CheckpointRef]:
    """Complete checkpoints of a run, oldest first."""
    base = checkpoints_uri(run_uri)
    fs, path = su.open_fs(base)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    refs = []
    for entry in entries:
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        m = _STEP_DIR.match(name)
        if m and su.exists(su.join(base, name, MARKER)):
            refs.append(CheckpointRef(su.join(base, name), int(m.group(1))))
    return sorted(refs, key=lambda r: r.step)


def latest_checkpoint(run_uri: str) -> CheckpointRef | None:
    refs = list_checkpoints(run_uri)
    return refs[-1] if refs else None


def _options() -> StateDictOptions:
    return StateDictOptions(full_state_dict=False, cpu_offload=False)


def save_checkpoint(
    run_uri: str,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    keep: int = 2,
    meta: dict[str, Any] | None = None,
) -> CheckpointRef:
    """Write checkpoint ``step`` (collective: every rank calls it) and prune to the newest ``keep``.

    ``extra`` is this rank's own state (data position, RNG); it is pickled per rank. ``meta`` is
    plain JSON about the whole run (e.g. its training phase), stored in the marker, so it is
    readable whatever the number of processes that load the checkpoint.
    """
    rank, world = _rank_world()
    base = checkpoints_uri(run_uri)
    name = step_dir_name(step)
    final_uri = su.join(base, name)
    local = su.scheme_of(run_uri) == "file"
    if local:
        _, base_path = su.open_fs(base)
        stage = _broadcast_str(os.path.join(base_path, f".tmp-{name}-{os.getpid()}") if rank == 0 else "")
        if rank == 0:
            shutil.rmtree(stage, ignore_errors=True)
            os.makedirs(stage, exist_ok=True)
    else:
        stage = _broadcast_str(tempfile.mkdtemp(prefix=f"lvd-ckpt-{name}-") if rank == 0 else "")
        os.makedirs(stage, exist_ok=True)
    _barrier()

    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options())
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=stage)
    torch.save(extra, os.path.join(stage, f"extra-rank{rank}.pt"))
    _barrier()

    marker = {**(meta or {}), "step": step, "world_size": world, "format": "torch.distributed.checkpoint"}
    if local:
        names = sorted(os.listdir(stage))
        digests = {k: v for part in _gather({n: file_digest(os.path.join(stage, n)) for n in names[rank::world]})
                   for k, v in part.items()}
        if rank == 0:
            _, final_path = su.open_fs(final_uri)
            marker["files"] = names
            marker["digests"] = digests
            with open(os.path.join(stage, MARKER), "w") as f:
                json.dump(marker, f)
            shutil.rmtree(final_path, ignore_errors=True)
            os.replace(stage, final_path)
    else:
        mine = [f for f in os.listdir(stage) if f.startswith(f"__{rank}_") or f == f"extra-rank{rank}.pt"]
        if rank == 0:
            mine += [f for f in os.listdir(stage) if f == ".metadata"]
        own_digests = {fname: file_digest(os.path.join(stage, fname)) for fname in mine}
        for fname in mine:
            su.put_file_atomic(os.path.join(stage, fname), su.join(final_uri, fname))
        everyone = _gather(own_digests)
        if rank == 0:
            digests = {k: v for part in everyone for k, v in part.items()}
            marker["files"] = sorted(digests)
            marker["digests"] = dict(sorted(digests.items()))
            su.write_bytes_atomic(su.join(final_uri, MARKER), json.dumps(marker).encode())
        shutil.rmtree(stage, ignore_errors=True)
    _barrier()
    if rank == 0:
        for old in list_checkpoints(run_uri)[:-keep]:
            su.remove(old.uri, recursive=True)
    _barrier()
    return CheckpointRef(final_uri, step)


def read_marker(ref: CheckpointRef) -> dict[str, Any]:
    """The checkpoint's ``_COMPLETE.json``: step, world size, files and the ``meta`` it was saved with."""
    return json.loads(su.read_bytes(su.join(ref.uri, MARKER)))


def _local_copy(ref: CheckpointRef) -> tuple[str, bool]:
    """A local directory holding the checkpoint (downloaded from S3 into a temp dir if needed)."""
    if su.scheme_of(ref.uri) == "file":
        return su.open_fs(ref.uri)[1], False
    tmp = tempfile.mkdtemp(prefix="lvd-ckpt-load-")
    marker_bytes = su.read_bytes(su.join(ref.uri, MARKER))
    with open(os.path.join(tmp, MARKER), "wb") as f:
        f.write(marker_bytes)
    for fname in json.loads(marker_bytes)["files"]:
        if not su.exists(su.join(ref.uri, fname)):
            continue  # reported as missing by verify_local_copy
        with su.open_input(su.join(ref.uri, fname)) as src, open(os.path.join(tmp, fname), "wb") as f:
            shutil.copyfileobj(src, f, _CHUNK)
    return tmp, True


def _problems(path: str, uri: str, marker: dict[str, Any], names: list[str]) -> list[str]:
    problems = []
    for name in names:
        want = marker["digests"][name]
        local = os.path.join(path, name)
        if not os.path.exists(local):
            problems.append(f"{su.join(uri, name)}: missing")
            continue
        size = os.path.getsize(local)
        if size != want["size"]:
            problems.append(f"{su.join(uri, name)}: size {size} bytes, expected {want['size']}")
            continue
        got = file_digest(local)["sha256"]
        if got != want["sha256"]:
            problems.append(f"{su.join(uri, name)}: sha256 {got}, expected {want['sha256']}")
    return problems


def verify_local_copy(path: str, ref: CheckpointRef) -> None:
    """Compare every file with the size and sha256 in the marker (collective: each rank hashes its
    share and all ranks agree), raising `CheckpointDamaged` before any tensor is read. A marker
    from before digests were recorded is accepted with a warning."""
    rank, world = _rank_world()
    with open(os.path.join(path, MARKER)) as f:
        marker = json.load(f)
    if "digests" not in marker:
        _log.warning("%s records no file digests (written by an older lvd): loaded unverified", ref.uri)
        return
    names = sorted(marker["digests"])
    problems = sorted(p for part in _gather(_problems(path, ref.uri, marker, names[rank::world])) for p in part)
    if problems:
        raise CheckpointDamaged(f"checkpoint {ref.uri} is damaged: " + "; ".join(problems))


def load_newest_good(run_uri: str, load: Callable[[CheckpointRef], T],
                     warn: Callable[[str], None] | None = None) -> tuple[CheckpointRef, T] | None:
    """``load`` the newest checkpoint that is not damaged, newest first, warning about each one
    skipped; None when the run has none. Every checkpoint damaged is an error, not a fresh start."""
    refs = list_checkpoints(run_uri)
    for ref in reversed(refs):
        try:
            return ref, load(ref)
        except CheckpointDamaged as err:
            message = f"skipping damaged checkpoint {ref.uri}: {err}"
            _log.warning(message)
            if warn is not None:
                warn(message)
    if refs:
        raise CheckpointDamaged(f"every checkpoint of {run_uri} is damaged; remove them to train from scratch")
    return None


def load_checkpoint(
    ref: CheckpointRef, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> dict[str, Any] | None:
    """Load model (and optimizer) state in place; return this rank's extra state, or None when
    the checkpoint was written by a different number of processes (then there is none for us).
    Files are checked against the marker's digests first (`CheckpointDamaged`)."""
    rank, world = _rank_world()
    path, is_temp = _local_copy(ref)
    try:
        verify_local_copy(path, ref)
        if optimizer is not None:
            model_sd, optim_sd = get_state_dict(model, optimizer, options=_options())
            state = {"model": model_sd, "optimizer": optim_sd}
        else:
            from torch.distributed.checkpoint.state_dict import get_model_state_dict

            state = {"model": get_model_state_dict(model, options=_options())}
        dcp.load(state, checkpoint_id=path)
        if optimizer is not None:
            set_state_dict(
                model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=_options()
            )
        else:
            from torch.distributed.checkpoint.state_dict import set_model_state_dict

            set_model_state_dict(model, state["model"], options=_options())
        with open(os.path.join(path, MARKER)) as f:
            marker = json.load(f)
        extra_path = os.path.join(path, f"extra-rank{rank}.pt")
        if marker.get("world_size") != world or not os.path.exists(extra_path):
            return None
        return torch.load(extra_path, weights_only=False)
    finally:
        if is_temp:
            shutil.rmtree(path, ignore_errors=True)

"""Load a model from any URI this project writes or accepts, checked before any work starts.

Accepted sources:

* a run URI (``runs/{run}``): its newest complete checkpoint;
* one checkpoint directory (``runs/{run}/checkpoints/step-N``);
* an ``lvd export`` file (``.safetensors``);
* an official DINOv2 state dict (``.pth``/``.pt``): a released backbone, or an official training
  checkpoint, which also holds the DINO/iBOT heads.

A project checkpoint holds the whole SSL state (student, EMA teacher, heads, centers). The model
used downstream is the EMA teacher, which for a distillation run is the student's EMA. The
architecture comes from the run's ``config.json`` and is compared with the tensor shapes in the
checkpoint's metadata before any weight is read, so a mismatch is a clear error, not a failure
halfway through a load.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

import torch
from torch import nn

from storage import uri as su
from tasks.train.checkpoint import MARKER, CheckpointRef, latest_checkpoint, load_checkpoint
from tasks.train.config import TrainConfig

HEAD_NAMES = ("dino_head", "ibot_head")


class CheckpointMismatch(ValueError):
    """A checkpoint does not hold the architecture its configuration describes."""


@dataclass
class LoadedModel:
    """A backbone ready for inference, its SSL heads (when the source has them) and provenance."""

    backbone: nn.Module
    heads: dict[str, nn.Module] = field(default_factory=dict)
    source: str = ""
    model_id: str = ""
    train_config: TrainConfig | None = None
    step: int | None = None

    def n_params(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters())


def find_checkpoint(uri: str) -> tuple[CheckpointRef, str]:
    """(checkpoint, run URI) for a run URI or a checkpoint directory URI."""
    uri = uri.rstrip("/")
    if su.exists(su.join(uri, MARKER)):
        m = re.match(r"^step-(\d+)$", su.basename(uri))
        return CheckpointRef(uri, int(m.group(1)) if m else -1), su.parent(su.parent(uri))
    ref = latest_checkpoint(uri)
    if ref is None:
        raise FileNotFoundError(
            f"{uri}: no complete checkpoint (expected a run with checkpoints/step-*/{MARKER}, a checkpoint "
            "directory, an .safetensors export or an official .pth)"
        )
    return ref, uri


def read_run_config(run_uri: str) -> TrainConfig:
    """The TrainConfig a run stored beside its checkpoints (it names the architecture)."""
    cfg_uri = su.join(run_uri, "config.json")
    if not su.exists(cfg_uri):
        raise FileNotFoundError(f"{run_uri} has no config.json, so its checkpoint's architecture is unknown")
    return TrainConfig.model_validate_json(su.read_bytes(cfg_uri))


def checkpoint_shapes(ref: CheckpointRef) -> dict[str, tuple[int, ...]]:
    """Shapes of the model tensors a DCP checkpoint holds, read from its metadata only."""
    from torch.distributed.checkpoint import FileSystemReader

    if su.scheme_of(ref.uri) == "file":
        meta = FileSystemReader(su.open_fs(ref.uri)[1]).read_metadata()
    else:
        tmp = tempfile.mkdtemp(prefix="lvd-ckpt-meta-")
        try:
            with open(os.path.join(tmp, ".metadata"), "wb") as f:
                f.write(su.read_bytes(su.join(ref.uri, ".metadata")))
            meta = FileSystemReader(tmp).read_metadata()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        key.removeprefix("model."): tuple(int(s) for s in m.size)
        for key, m in meta.state_dict_metadata.items()
        if key.startswith("model.") and hasattr(m, "size")
    }


def check_architecture(model: nn.Module, shapes: dict[str, tuple[int, ...]], what: str) -> None:
    """Raise `CheckpointMismatch` naming missing keys and shape mismatches (extra keys are fine:
    a checkpoint may hold more state than the part being loaded)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    mismatched = [f"{k}: checkpoint {shapes[k]} vs model {expected[k]}" for k in sorted(set(expected) & set(shapes))
                  if shapes[k] != expected[k]]
    if not (missing or mismatched):
        return
    lines = [f"{what}: the checkpoint does not hold the architecture its configuration describes"]
    if mismatched:
        lines.append(f"shape mismatches ({len(mismatched)}): " + "; ".join(mismatched[:8]))
    if missing:
        lines.append(f"missing from the checkpoint ({len(missing)}): " + ", ".join(missing[:8]))
    raise CheckpointMismatch("\n".join(lines))


def build_checkpoint_model(cfg: TrainConfig) -> nn.Module:
    """The module a train (or distill) checkpoint was saved from: the SSL meta-architecture."""
    from tasks.train.build import build_ssl

    return build_ssl(cfg)


def load_project_checkpoint(uri: str, cfg: TrainConfig | None = None) -> LoadedModel:
    """Run or checkpoint URI -> EMA backbone and heads, after checking the architecture."""
    ref, run_uri = find_checkpoint(uri)
    cfg = cfg or read_run_config(run_uri)
    with torch.random.fork_rng(devices=[]):
        model = build_checkpoint_model(cfg)
    check_architecture(model, checkpoint_shapes(ref), f"{ref.uri} ({cfg.model.arch})")
    load_checkpoint(ref, model, None)
    teacher = model.teacher
    backbone = teacher["backbone"].eval()
    heads = {name: teacher[name].eval() for name in HEAD_NAMES if name in teacher}
    model_id = f"{su.basename(run_uri)}@step-{ref.step}"
    return LoadedModel(backbone, heads, ref.uri, model_id, cfg, ref.step)


def _local_file(uri: str) -> tuple[str, bool]:
    if su.scheme_of(uri) == "file":
        return su.open_fs(uri)[1], False
    fd, path = tempfile.mkstemp(suffix=os.path.splitext(uri)[1])
    with os.fdopen(fd, "wb") as f:
        f.write(su.read_bytes(uri))
    return path, True


def load_safetensors(uri: str) -> LoadedModel:
    from models.hub import from_safetensors

    path, temp = _local_file(uri)
    try:
        backbone, heads = from_safetensors(path, heads=True)
    finally:
        if temp:
            os.remove(path)
    return LoadedModel(backbone, heads, uri, f"export:{su.basename(uri)}")


def load_official(uri: str) -> LoadedModel:
    """Official DINOv2 weights; heads too when the file is an official training checkpoint."""
    from models.hub import dino_head_from_state_dict
    from models.official_weights import vit_from_official_state_dict

    path, temp = _local_file(uri)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    finally:
        if temp:
            os.remove(path)
    backbone, name = vit_from_official_state_dict(raw, su.basename(uri))
    container = raw.get("teacher", raw.get("model", raw)) if isinstance(raw, dict) else {}
    heads = {}
    for head in HEAD_NAMES:
        part = {k[len(head) + 1 :]: v for k, v in container.items() if isinstance(k, str) and k.startswith(head + ".")}
        if part:
            heads[head] = dino_head_from_state_dict(part).eval()
    return LoadedModel(backbone, heads, uri, name)


def load_model(uri: str) -> LoadedModel:
    """Any supported model URI (see the module docstring) -> `LoadedModel` on the CPU, eval mode."""
    lowered = uri.lower()
    if lowered.endswith(".safetensors"):
        return load_safetensors(uri)
    if lowered.endswith((".pth", ".pt")):
        return load_official(uri)
    return load_project_checkpoint(uri)

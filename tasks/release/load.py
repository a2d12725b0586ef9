"""Load a model from any URI this project writes or accepts, checked before any work starts.

Accepted sources:

* a run URI (``runs/{run}``): its newest complete checkpoint;
* one checkpoint directory (``runs/{run}/checkpoints/step-N``);
* an ``lvd export`` file (``.safetensors``);
* the run's single-file backbone (``runs/{run}/backbone.pt``), or a copy detector's file
  (``copy_detector.pt``: the same layout plus its projection as the ``copy_head`` head and its
  calibration in ``meta``);
* an official DINOv2 state dict: a released backbone, or an official training checkpoint, which
  also holds the DINO/iBOT heads; or a timm DINOv2 / ViT-H state dict.

Files are recognised by their contents, whatever their name; anything else is refused with what
it holds named.

A project checkpoint holds the whole SSL state (student, EMA teacher, heads, centers). The model
used downstream is the EMA teacher, which for a distillation run is the student's EMA. The
architecture comes from the run's ``config.json`` and is compared with the tensor shapes in the
checkpoint's metadata before any weight is read, so a mismatch is a clear error, not a failure
halfway through a load.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field

import torch
from torch import nn

from storage import uri as su
from tasks.train.checkpoint import MARKER, CheckpointRef, latest_checkpoint, load_checkpoint
from tasks.train.config import TrainConfig
from lvd.errors import LvdError

HEAD_NAMES = ("dino_head", "ibot_head")


class CheckpointMismatch(LvdError, ValueError):
    """A checkpoint does not hold the architecture its configuration describes."""


class ModelFormatError(LvdError, ValueError):
    """A file is no model format lvd reads; the message names what it holds."""


@dataclass
class LoadedModel:
    """A backbone ready for inference, its SSL heads (when the source has them) and provenance."""

    backbone: nn.Module
    heads: dict[str, nn.Module] = field(default_factory=dict)
    source: str = ""
    model_id: str = ""
    train_config: TrainConfig | None = None
    step: int | None = None
    image_size: int | None = None  # the resolution it was trained at, where the source records it
    meta: dict = field(default_factory=dict)  # what the source records beside its weights (a copy detector's calibration)

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
    return LoadedModel(backbone, heads, ref.uri, model_id, cfg, ref.step, cfg.crops.global_crops_size)


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


def is_torchscript(data: bytes) -> bool:
    """A TorchScript archive: a zip holding compiled code, not just pickled tensors."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def is_backbone_file(payload: object) -> bool:
    """The single-file backbone `lvd train` writes as ``runs/{run}/backbone.pt``
    (``{"model_config": {"name": preset, **constructor arguments}, "backbone": state_dict}``)."""
    return isinstance(payload, dict) and "model_config" in payload and "backbone" in payload


def copy_head_from_state_dict(state: dict) -> nn.Module:
    """A copy detector's projection (``tasks.copydet``): one linear layer, its sizes read off the weights."""
    weight = state.get("weight")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ModelFormatError("the file's copy_head is no linear layer (expected a 2-d 'weight')")
    head = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    head.load_state_dict(state, strict=True)
    return head.eval()


def backbone_from_file(payload: dict) -> nn.Module:
    """A backbone file's model, loaded strictly (a missing block is an error, never a shallower model)."""
    from models.official_weights import check_state_dict
    from models.presets import build_vit

    cfg = dict(payload["model_config"])
    name = cfg.pop("name", None) or cfg.pop("arch", None) or cfg.pop("preset", None)
    if name is None:
        raise ModelFormatError("the backbone file's model_config names no ViT preset ('name', 'arch' or 'preset')")
    with torch.random.fork_rng(devices=[]):
        model = build_vit(name, **cfg)
    state = {k.removeprefix("backbone."): v for k, v in payload["backbone"].items()}
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return model.eval()


def model_from_bytes(data: bytes, uri: str) -> LoadedModel:
    """A model file's bytes -> `LoadedModel`; the format is read off the contents, not the name."""
    from models.hub import backbone_from_state_dict, dino_head_from_state_dict

    name = su.basename(uri)
    if is_torchscript(data):
        raise ModelFormatError(f"{uri} is a TorchScript archive: its weights are compiled code, which only "
                               "the embed stage runs (as embed.backbone); load a state dict or export instead")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors alike: the file is not a readable torch file
        raise ModelFormatError(f"{uri} is not a PyTorch file lvd can read ({type(err).__name__}: {err})") from err
    if is_backbone_file(payload):
        backbone = backbone_from_file(payload)
        arch = payload["model_config"].get("name", name)
        heads = {"copy_head": copy_head_from_state_dict(payload["copy_head"])} if "copy_head" in payload else {}
        meta = {"copy_detector": payload["copy_detector"]} if "copy_detector" in payload else {}
        return LoadedModel(backbone, heads, uri, f"checkpoint:{arch}:{name}", step=payload.get("step"),
                           image_size=payload["model_config"].get("img_size"), meta=meta)
    backbone, model_id = backbone_from_state_dict(payload) if isinstance(payload, dict) else (None, "")
    if backbone is None:
        found = f"a dict with keys {sorted(map(str, payload))[:8]}" if isinstance(payload, dict) else \
            f"a {type(payload).__name__}"
        raise ModelFormatError(
            f"{uri} holds {found}: neither an lvd backbone file ({{'model_config', 'backbone'}}), an lvd "
            "export (.safetensors), a run or checkpoint directory, nor a DINOv2 or timm ViT state dict"
        )
    container = payload.get("teacher", payload.get("model", payload))
    heads = {}
    for head in HEAD_NAMES:
        part = {k[len(head) + 1 :]: v for k, v in container.items() if isinstance(k, str) and k.startswith(head + ".")}
        if part:
            heads[head] = dino_head_from_state_dict(part).eval()
    return LoadedModel(backbone.eval(), heads, uri, model_id)


def load_model(uri: str) -> LoadedModel:
    """Any model URI lvd writes or accepts (see the module docstring) -> `LoadedModel` on the CPU,
    eval mode. The one loader of embed, evaluate, distillation teachers and `lvd.load`."""
    if uri.lower().endswith(".safetensors"):
        return load_safetensors(uri)
    try:
        data = su.read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError):
        if not su.exists(uri):
            raise FileNotFoundError(f"model {uri} does not exist") from None
        return load_project_checkpoint(uri)
    return model_from_bytes(data, uri)

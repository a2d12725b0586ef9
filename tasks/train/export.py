"""Turn a training run into a single-file backbone that any stage can load by URI.

The run's checkpoints (torch.distributed.checkpoint directories) hold everything needed to
resume; consumers that only embed images want the teacher's backbone alone. The file is
``{"model_config": {"name": preset, **constructor overrides}, "backbone": state_dict}``, the
layout `tasks.release.load` (the one model loader) reads.
"""
from __future__ import annotations

import io

import torch

from storage import uri as su
from tasks.train.build import build_ssl
from tasks.train.checkpoint import latest_checkpoint, load_checkpoint
from tasks.train.config import TrainConfig

BACKBONE_FILE = "backbone.pt"


def run_config(run_uri: str) -> TrainConfig:
    """The TrainConfig a run was started with (stored beside its metrics)."""
    from tasks.release.load import read_run_config

    return read_run_config(run_uri)


def inference_model_config(cfg: TrainConfig) -> dict:
    """Constructor arguments of the backbone for inference: same weights layout, no stochastic depth."""
    m = cfg.model
    out = {
        "name": m.arch,
        "patch_size": m.patch_size,
        "img_size": cfg.crops.global_crops_size,
        "num_register_tokens": m.num_register_tokens,
        "init_values": m.layerscale or None,
        "drop_path_rate": 0.0,
    }
    if m.ffn_layer != "preset":
        out["ffn_layer"] = m.ffn_layer
    return out


def export_teacher_backbone(run_uri: str, out_uri: str | None = None) -> str:
    """Write the latest checkpoint's teacher backbone as ``{run_uri}/backbone.pt``; return its URI."""
    cfg = run_config(run_uri)
    ref = latest_checkpoint(run_uri)
    if ref is None:
        raise FileNotFoundError(f"run {run_uri} has no complete checkpoint to export")
    model = build_ssl(cfg)
    load_checkpoint(ref, model, None)
    state = {k: v.detach().clone() for k, v in model.teacher["backbone"].state_dict().items()}
    buf = io.BytesIO()
    torch.save({"model_config": inference_model_config(cfg), "backbone": state, "step": ref.step}, buf)
    out_uri = out_uri or su.join(run_uri, BACKBONE_FILE)
    su.write_bytes_atomic(out_uri, buf.getvalue())
    return out_uri

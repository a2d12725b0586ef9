"""Export a model to one ``.safetensors`` file that loads without this project's training code.

Tensors: the backbone under ``backbone.`` in the official DINOv2 naming (which is this project's),
and the SSL heads under ``dino_head.`` / ``ibot_head.`` so self-supervised training can continue
from the export. Metadata: the format tag, the backbone's constructor arguments (JSON), the
source and, for project checkpoints, the training configuration. ``models.hub.from_safetensors``
reads it back.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from models.hub import SAFETENSORS_FORMAT
from models.official_weights import infer_vit_kwargs
from storage import uri as su
from tasks.release.load import LoadedModel, load_model


def vit_constructor_kwargs(backbone: nn.Module) -> dict[str, Any]:
    """Constructor arguments that rebuild ``backbone`` exactly (shapes from the tensors, the rest
    from the module: head count and positional-embedding resize rule are not in the weights)."""
    kwargs, _ = infer_vit_kwargs(backbone.state_dict())
    kwargs.update(
        num_heads=int(backbone.num_heads),
        interpolate_antialias=bool(backbone.interpolate_antialias),
        interpolate_offset=float(backbone.interpolate_offset),
        drop_path_rate=0.0,
    )
    return kwargs


def export_tensors(model: LoadedModel) -> tuple[dict, dict[str, str]]:
    """(name -> contiguous CPU tensor, metadata) of a loaded model."""
    tensors = {f"backbone.{k}": v.detach().cpu().contiguous().clone() for k, v in model.backbone.state_dict().items()}
    for name, head in model.heads.items():
        tensors.update({f"{name}.{k}": v.detach().cpu().contiguous().clone() for k, v in head.state_dict().items()})
    meta = {
        "format": SAFETENSORS_FORMAT,
        "vit_kwargs": json.dumps(vit_constructor_kwargs(model.backbone)),
        "source": model.source,
        "model_id": model.model_id,
        "heads": ",".join(sorted(model.heads)),
    }
    if model.train_config is not None:
        meta["train_config"] = model.train_config.model_dump_json()
    if model.step is not None:
        meta["step"] = str(model.step)
    return tensors, meta


def export_safetensors(uri: str, out_uri: str) -> dict[str, Any]:
    """Write the model at ``uri`` to ``out_uri`` (path, file:// or s3://); returns a small summary."""
    from safetensors.torch import save

    model = load_model(uri)
    tensors, meta = export_tensors(model)
    data = save(tensors, metadata=meta)
    su.write_bytes_atomic(out_uri, data)
    return {"source": model.source, "out": out_uri, "model_id": model.model_id, "bytes": len(data),
            "params": model.n_params(), "heads": sorted(model.heads)}

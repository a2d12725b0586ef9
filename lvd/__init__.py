"""Command line and user-facing API of lvd.

``lvd.load(uri)`` returns a trained backbone (a plain ``torch.nn.Module`` with ``forward_features``)
from a run, a checkpoint directory, an ``lvd export`` file or official DINOv2 weights;
``lvd.export(uri, out)`` writes it, heads included, to one ``.safetensors`` file; ``lvd.open_dataset(uri)``
reads the curated shards of a dataset version. All import lazily, so ``import lvd`` stays cheap
for the command line.
"""

from __future__ import annotations

from typing import Any


def load(uri: str, *, heads: bool = False, device: str = "cpu") -> Any:
    """The backbone at ``uri`` in eval mode (the EMA teacher of a run); with ``heads=True``,
    ``(backbone, {"dino_head": ..., "ibot_head": ...})`` for continuing self-supervised training."""
    from tasks.release.load import load_model

    model = load_model(uri)
    backbone = model.backbone.to(device)
    if heads:
        return backbone, {name: head.to(device) for name, head in model.heads.items()}
    return backbone


def export(uri: str, out: str) -> dict:
    """Write the model at ``uri`` (backbone and heads) to the ``.safetensors`` file ``out``."""
    from tasks.release.export import export_safetensors

    return export_safetensors(uri, out)


def open_dataset(uri: str) -> Any:
    """The curated shards of ``{root}/{dataset}`` (following ``latest``) or of a version URI: manifest rows,
    shard URLs (earlier versions' shards included, by URL) and an iterator over samples."""
    from lvd.dataset import open_dataset as _open

    return _open(uri)

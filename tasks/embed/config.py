"""Typed settings of the embedding stage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class EmbedConfig(BaseModel):
    """Which backbone embeds the images, and how the batches are fed to it."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field(
        "random:vit_pico",
        min_length=1,
        description=(
            "Backbone URI or spec: a project checkpoint, an official DINOv2 state-dict file or a "
            "TorchScript file (local path, file:// or s3://), 'random:<preset>[@seed]' for a "
            "random-init ViT, or 'pixels:<size>' for the normalised-pixel descriptor."
        ),
    )
    arch: str | None = Field(
        None,
        description=(
            "The ViT architecture the backbone must be (a models preset: 'vith16' for the paper's ViT-H/16, "
            "'vitl14', ...): a file of any other width, depth, head count, patch size or MLP is refused "
            "before any image is embedded. None: whatever the file holds."
        ),
    )
    features: Literal["cls", "cls+avgpool"] = Field(
        "cls",
        description="CLS token only, or CLS concatenated with the mean of the patch tokens (each L2-normalised).",
    )
    image_size: int | None = Field(
        None,
        ge=8,
        le=1036,
        description="Center-crop side in pixels; None uses the backbone's own (224 for DINOv2). Rounded to the patch size.",
    )
    resize_ratio: float = Field(
        256 / 224,
        ge=1.0,
        le=2.0,
        description="The short side is resized to image_size * resize_ratio before the center crop.",
    )
    batch_size: int = Field(64, ge=1, le=8192, description="Images per forward pass.")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes that decode JPEGs (0: in-process).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the backbone runs; auto picks cuda when present.")
    autocast_bf16: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU, where fp32 keeps results exact).")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str | None) -> str | None:
        if value is not None:
            from models.presets import ALIASES, PRESETS

            if value not in PRESETS and value not in ALIASES:
                raise ValueError(f"unknown ViT preset {value!r}; known: {', '.join(sorted(PRESETS) + sorted(ALIASES))}")
        return value

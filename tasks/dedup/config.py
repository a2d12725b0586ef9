"""Typed settings of the dedup stage (self-dedup of the crawl pool and eval-set decontamination).

Defaults follow the DINOv2 recipe where it gives numbers (k=64 neighbours, cosine > 0.6 for
self-dedup, > 0.45 against evaluation sets, one image kept per component, whole component
dropped on contamination). Thresholds left at None take the copy-detection model's own
calibrated operating point, because a cosine of 0.6 means different things for SSCD and for the
offline descriptor.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DedupConfig(BaseModel):
    """Which duplicate detectors run, with which thresholds, and how the graph is searched."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(True, description="Group images whose original bytes have the same sha256.")
    hash_method: Literal["pca", "phash", "none"] = Field(
        "pca",
        description=(
            "Perceptual hash: 'pca' (sign bits of a PCA projection of low-frequency DCT coefficients, "
            "trained on a pool sample), 'phash' (imagehash-compatible 64-bit pHash) or 'none'."
        ),
    )
    hash_bits: Literal[64, 128, 256] = Field(64, description="Code length of the PCA hash (pHash is always 64).")
    hash_radius: int = Field(
        4, ge=0, le=32, description="Two codes within this Hamming distance (inclusive) are duplicates."
    )
    hash_bucket_cap: int = Field(
        1024, ge=1, le=1_000_000,
        description="Hamming search: codes compared per code within one substring bucket (bounds work on degenerate buckets).",
    )
    hash_model: str | None = Field(
        None,
        description=(
            "A trained PCA hash used as is (an .npz URI, e.g. an earlier version's dedup/pca_hash.npz), so "
            "every version codes images alike; None: train one (on hash_reference, else on a pool sample)."
        ),
    )
    hash_reference: list[str] = Field(
        default_factory=list,
        description=(
            "Reference images the PCA hash is trained on when no hash_model is given (image folders or "
            "WebDataset .tar URIs): a fixed sample, so what else the pool holds never moves the codes. "
            "Empty: a sample of the pool."
        ),
    )
    hash_train_samples: int = Field(
        100_000, ge=256, le=10_000_000, description="Images sampled (from the reference or the pool) to train the PCA hash."
    )
    hash_train_shards: int = Field(
        8, ge=1, le=100_000, description="Shards (spread over the pool) read to draw the PCA-hash training sample."
    )

    copy_model: str | None = Field(
        "builtin:dct",
        description=(
            "Copy-detection descriptor: 'builtin:dct' (offline multi-scale DCT + colour descriptor, no "
            "weights), a TorchScript SSCD file, any model lvd loads (a run, checkpoint, backbone.pt, lvd "
            "export, official DINOv2 or timm file: CLS + GeM-pooled patch tokens), by local path, file:// "
            "or s3://, or None to skip copy detection."
        ),
    )
    copy_resize: Literal["short288", "square320"] = Field(
        "short288", description="SSCD preprocessing: short side to 288 (aspect kept) or a 320x320 square."
    )
    copy_threshold: float | None = Field(
        None, gt=0.0, lt=1.0, description="Cosine above which two pool images are copies; None: the model's (SSCD 0.6)."
    )
    eval_threshold: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="Cosine above which a pool image copies an evaluation image; None: the model's (SSCD 0.45).",
    )
    mirror: bool = Field(
        True,
        description=(
            "Score a pair by the better of the image and its mirror image (copy models that can mirror "
            "their descriptors: builtin:dct), so flipped copies match."
        ),
    )
    knn_k: int = Field(64, ge=1, le=2048, description="Neighbours per image in the copy-detection k-NN graph.")
    flat_max: int = Field(
        200_000, ge=1, le=100_000_000, description="Pools up to this size use an exact flat index; larger ones IVF."
    )
    ivf_codec: Literal["flat", "sq8", "pq"] = Field(
        "sq8", description="Vector codec inside the IVF index (memory per vector: 4d, d, or d/8 bytes)."
    )
    ivf_nprobe: int = Field(16, ge=1, le=65_536, description="Inverted lists visited per IVF query.")
    ivf_train_samples: int = Field(
        200_000, ge=1_000, le=10_000_000, description="Descriptors sampled to train the IVF quantiser."
    )
    eval_sets: list[str] = Field(
        default_factory=list,
        description="Evaluation sets to decontaminate against: image folders or WebDataset .tar URIs (or folders of them).",
    )
    keep: Literal["original", "resolution", "bytes", "first"] = Field(
        "original",
        description=(
            "Which member of a duplicate group survives: 'original' (the unedited image: the group's most "
            "central members by similarity, then colour over grey, then the largest picture with uniform "
            "borders not counted, then most bytes), the largest original, the most bytes, or the first seen."
        ),
    )
    batch_size: int = Field(256, ge=1, le=65_536, description="Images per descriptor batch.")
    search_batch: int = Field(8_192, ge=64, le=1_000_000, description="Queries per k-NN / Hamming search batch.")
    use_gpu: Literal["auto", "never"] = Field("auto", description="Use faiss-gpu for the k-NN search when a GPU is present.")

    @model_validator(mode="after")
    def _check_hash(self) -> "DedupConfig":
        max_radius = (64 if self.hash_method == "phash" else self.hash_bits) // 4
        if self.hash_method != "none" and self.hash_radius > max_radius:
            raise ValueError(f"hash_radius {self.hash_radius} is too loose for a {max_radius * 4}-bit code (max {max_radius})")
        return self

    @property
    def code_bits(self) -> int:
        """Bits per perceptual-hash code."""
        return 64 if self.hash_method == "phash" else self.hash_bits

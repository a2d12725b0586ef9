"""Typed configuration of evaluate-dinov2: which models, which labelled sets, which protocols."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.evaluate.linear import OFFICIAL_LRS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalSetConfig(_Section):
    """One labelled classification set: a train split (reference / probe training) and a test split."""

    name: str = Field("fashion-mnist", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="Name used in the report.")
    train: str = Field("fashion-mnist", min_length=1,
                       description="Train split: 'fashion-mnist', an image folder (one sub-folder per class), WebDataset "
                       "shards (a .tar or a folder of them) or a Parquet file.")
    test: str = Field("fashion-mnist:test", min_length=1, description="Test split, same kinds.")
    kind: Literal["auto", "fashion_mnist", "image_folder", "webdataset", "parquet"] = Field(
        "auto", description="Source type; 'auto' infers it from the URI.")
    image_key: str = Field("image", min_length=1,
                           description="Parquet column of the encoded image (WebDataset: any jpg/png/webp field).")
    label_key: str = Field("label", min_length=1,
                           description="Parquet column or WebDataset field (e.g. 'cls') of the label (int or class name).")
    train_size: int | None = Field(None, ge=10, description="Class-balanced subset of train (None: all).")
    test_size: int | None = Field(None, ge=10, description="Class-balanced subset of test (None: all).")


class KnnSection(_Section):
    enabled: bool = Field(True, description="Run k-NN (DINOv2 protocol: CLS, cosine, exp(s/T) votes).")
    ks: tuple[int, ...] = Field((10, 20, 100, 200), min_length=1, description="Neighbour counts.")
    temperature: float = Field(0.07, gt=0, le=10, description="Vote temperature T.")


class LinearSection(_Section):
    enabled: bool = Field(True, description="Train linear probes on frozen features.")
    lrs: tuple[float, ...] = Field(OFFICIAL_LRS, min_length=1, description="Learning-rate grid (before batch/256 scaling).")
    epochs: int = Field(10, ge=1, le=1000, description="Passes over the probe's training features.")
    batch_size: int = Field(128, ge=2, le=65536, description="Mini-batch size of probe training.")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Part of train held out to choose variant and LR.")


class CopyDetectionSection(_Section):
    enabled: bool = Field(False, description="Measure copy detection on the planted set (packaged photos + DISC21 edits).")
    n_with_copies: int | None = Field(None, ge=1, description="Photos that get copies (None: half of them).")
    edits: tuple[str, ...] = Field(("exact", "reencode", "resize", "crop", "colour", "text", "emoji", "pad",
                                    "screenshot", "flip"), min_length=1, description="DISC21 edit types to plant.")
    top_k: int = Field(10, ge=1, le=1000, description="References predicted per query.")


class PcaSection(_Section):
    enabled: bool = Field(True, description="Patch-feature PCA pictures of a few packaged photos.")
    n_images: int = Field(4, ge=1, le=16, description="Photos in the picture.")
    image_size: int = Field(224, ge=28, le=1024, description="Side of the photos fed to the model (px).")


class PatchMatchSection(_Section):
    enabled: bool = Field(True, description="Patch matching between photos and planted copies (mutual nearest "
                          "neighbours of foreground patches), measured and drawn.")
    edits: tuple[Literal["identity", "flip", "crop", "rescale"], ...] = Field(
        ("flip", "crop", "rescale"), min_length=1,
        description="Planted copies: horizontal flip, a 3/4 crop resized back, a ~3/4 downscale; 'identity' is a "
        "sanity row (every kept patch matches itself).")
    n_images: int = Field(4, ge=1, le=14, description="Photos that get copies (the PCA pictures' photos).")
    image_size: int = Field(224, ge=28, le=1024, description="Side of the photos (px): a multiple of the patch size.")
    radius: float = Field(1.0, ge=0, le=8, description="A match is correct within this many patches of the true "
                          "location (Chebyshev distance).")


class EvaluateConfig(_Section):
    """Compare checkpoints and baselines on the same data with the DINOv2 evaluation protocols."""

    models: list[str] = Field(default_factory=list,
                              description="Checkpoint URIs: runs, checkpoint directories, .safetensors exports, "
                              "official .pth files.")
    baselines: list[str] = Field(default_factory=lambda: ["random:vit_small", "pixels"],
                                 description="'random:<preset>[@seed]' or 'random:<run URI>[@seed]' (that architecture at random "
                                 "init) and 'pixels[:size]' (raw pixels).")
    datasets: list[EvalSetConfig] = Field(default_factory=lambda: [EvalSetConfig()], description="Labelled sets.")
    image_size: int = Field(224, ge=8, le=1024, description="Side of the evaluation images (resize 256/224, centre crop).")
    pixels_size: int = Field(32, ge=4, le=128, description="Side of the raw-pixel baseline's images.")
    knn: KnnSection = Field(default_factory=KnnSection, description="k-NN classification.")
    linear: LinearSection = Field(default_factory=LinearSection, description="Linear probes.")
    copy_detection: CopyDetectionSection = Field(default_factory=CopyDetectionSection, description="Copy detection.")
    pca: PcaSection = Field(default_factory=PcaSection, description="Patch-PCA pictures.")
    patch_match: PatchMatchSection = Field(default_factory=PatchMatchSection,
                                           description="Patch matching on planted copies (pictures and accuracy).")
    batch_size: int = Field(128, ge=1, le=4096, description="Images per forward pass.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device: 'auto' picks CUDA when present.")
    cpu_threads: int = Field(0, ge=0, le=256, description="torch intra-op threads on CPU (0: torch's default).")
    seed: int = Field(0, ge=0, description="Seed of subsets, held-out split and probe initialisation.")

    def with_random_init_of(self, run_uri: str) -> "EvaluateConfig":
        """This config with a ``random:<run_uri>`` baseline: the trained run's own architecture and
        config (LayerScale, registers, patch size) at random init, so the random-init row shows what
        training added (a preset may differ from the run, e.g. in LayerScale, and then scores at chance)."""
        spec = f"random:{run_uri}"
        if spec in self.baselines:
            return self
        return self.model_copy(update={"baselines": [*self.baselines, spec]})

    @model_validator(mode="after")
    def _something_to_compare(self) -> "EvaluateConfig":
        if not self.models and not self.baselines:
            raise ValueError("models and baselines are both empty: nothing to evaluate")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        return self

"""NSFW scoring with an image classifier loaded from an ONNX or TorchScript file.

The classifier's preprocessing is part of its identity (open_nsfw wants BGR, mean-subtracted,
NHWC at 224 after a 256 resize; most user models want ImageNet-normalised RGB NCHW), so it is
resolved once into an :class:`NsfwSpec` from the builtin's values and the config's overrides.
:meth:`NsfwClassifier.check` runs the model on one dummy image, so a file that is not a model,
or one whose input shape does not fit the spec, fails before any shard is read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tasks.safety.config import NsfwConfig
from tasks.safety.models import ModelFile, SafetyModelError

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# open_nsfw (Caffe) conventions: BGR, mean-subtracted, no scaling, 256 -> centre crop 224, NHWC in the ONNX port
OPEN_NSFW = dict(input_size=224, resize=256, channel_order="bgr", mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0),
                 layout="nhwc", nsfw_index=1, activation="none")


@dataclass(frozen=True)
class NsfwSpec:
    """Everything needed to turn RGB images into the model's input and its output into a probability."""

    input_size: int
    resize: int | None
    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str | None
    nsfw_index: int
    activation: str


def resolve_spec(cfg: NsfwConfig) -> NsfwSpec:
    """The builtin's preprocessing (or ImageNet conventions for a user's model), overridden by the config."""
    base = dict(OPEN_NSFW) if cfg.model == "builtin:open-nsfw" else dict(
        input_size=224, resize=None, channel_order="rgb", mean=IMAGENET_MEAN, std=IMAGENET_STD, layout=None,
        nsfw_index=1, activation="softmax")
    for name in base:
        value = getattr(cfg, name)
        if value is not None:
            base[name] = value
    if base["resize"] is not None and base["resize"] < base["input_size"]:
        raise SafetyModelError(f"nsfw.resize ({base['resize']}) is smaller than nsfw.input_size ({base['input_size']})")
    return NsfwSpec(**base)


def preprocess(images: list[Image.Image], spec: NsfwSpec, layout: str) -> np.ndarray:
    """A float32 batch in the model's layout, channel order and normalisation."""
    size = spec.input_size
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    out = np.empty((len(images), size, size, 3), np.float32)
    for i, img in enumerate(images):
        img = img.convert("RGB")
        if spec.resize:
            img = img.resize((spec.resize, spec.resize), Image.Resampling.BILINEAR)
            off = (spec.resize - size) // 2
            img = img.crop((off, off, off + size, off + size))
        else:
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, np.float32)
        if spec.channel_order == "bgr":
            arr = arr[:, :, ::-1]
        out[i] = (arr - mean) / std
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if layout == "nchw" else out


def _activate(logits: np.ndarray, spec: NsfwSpec) -> np.ndarray:
    if logits.ndim == 1:
        logits = logits[:, None]
    logits = logits.reshape(logits.shape[0], -1).astype(np.float64)
    if spec.nsfw_index >= logits.shape[1]:
        raise SafetyModelError(
            f"nsfw.nsfw_index is {spec.nsfw_index} but the model outputs {logits.shape[1]} values per image"
        )
    if spec.activation == "softmax":
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return p[:, spec.nsfw_index]
    if spec.activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits[:, spec.nsfw_index]))
    return logits[:, spec.nsfw_index]


def _is_torchscript(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"  # TorchScript archives are zip files; ONNX is a protobuf


class _OnnxBackend:
    def __init__(self, path: str, device: str, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise SafetyModelError(f"device 'cuda' asked for, but onnxruntime offers only {available}")
        try:
            self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise SafetyModelError(f"{path} is not a loadable ONNX model: {exc}") from exc
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_shape = inp.name, list(inp.shape)
        self.providers = self.session.get_providers()

    def layout(self) -> str | None:
        shape = self.input_shape
        if len(shape) != 4:
            raise SafetyModelError(f"the ONNX model's input has shape {shape}; an image classifier takes 4 dimensions")
        if shape[3] == 3:
            return "nhwc"
        if shape[1] == 3:
            return "nchw"
        return None

    def fixed_side(self, layout: str) -> int | None:
        h, w = (self.input_shape[1:3] if layout == "nhwc" else self.input_shape[2:4])
        return h if isinstance(h, int) and h == w else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch})[0])


class _TorchScriptBackend:
    def __init__(self, path: str, device: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        if device == "cuda" and not torch.cuda.is_available():
            raise SafetyModelError("device 'cuda' asked for, but torch sees no CUDA device")
        self.device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(path, map_location=self.device).eval()
        except Exception as exc:  # torch raises RuntimeError and others for unreadable archives
            raise SafetyModelError(f"{path} is not a loadable TorchScript model: {exc}") from exc
        self.providers = [self.device]

    def layout(self) -> str | None:
        return None

    def fixed_side(self, layout: str) -> int | None:
        return None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch).to(self.device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().cpu().numpy()


class NsfwClassifier:
    """Scores RGB images with the NSFW probability of a classifier file."""

    def __init__(self, model: ModelFile, cfg: NsfwConfig, device: str = "auto", threads: int = 1) -> None:
        self.model, self.cfg = model, cfg
        self.spec = resolve_spec(cfg)
        backend = _TorchScriptBackend if _is_torchscript(model.path) else _OnnxBackend
        try:
            self.backend = backend(model.path, device, threads)
        except SafetyModelError as exc:
            raise SafetyModelError(f"nsfw model {model.uri}: {exc}") from exc
        self.layout = self.spec.layout or self.backend.layout() or "nchw"
        side = self.backend.fixed_side(self.layout)
        if side is not None and side != self.spec.input_size:
            raise SafetyModelError(
                f"nsfw model {model.uri} takes {side}x{side} inputs ({self.layout}, shape {self.backend.input_shape}) "
                f"but nsfw.input_size is {self.spec.input_size}"
            )

    @property
    def model_id(self) -> str:
        return f"{self.model.uri}@{self.model.sha256[:12]}"

    def scores(self, images: list[Image.Image]) -> np.ndarray:
        """NSFW probability per image, in [0, 1]."""
        if not images:
            return np.zeros(0, np.float32)
        out = []
        for i in range(0, len(images), self.cfg.batch_size):
            chunk = images[i : i + self.cfg.batch_size]
            raw = self.backend(preprocess(chunk, self.spec, self.layout))
            if raw.shape[0] != len(chunk):
                raise SafetyModelError(
                    f"nsfw model {self.model.uri} returned {raw.shape[0]} rows for a batch of {len(chunk)} images"
                )
            out.append(_activate(raw, self.spec))
        return np.concatenate(out).astype(np.float32)

    def check(self) -> float:
        """Run the model on one dummy image; any misfit is a SafetyModelError naming the model and shapes."""
        dummy = Image.new("RGB", (self.spec.resize or self.spec.input_size,) * 2, (127, 127, 127))
        try:
            score = self.scores([dummy])
        except SafetyModelError:
            raise
        except Exception as exc:  # the runtime's own error says what did not fit
            raise SafetyModelError(
                f"nsfw model {self.model.uri} failed on a {self.spec.input_size}x{self.spec.input_size} "
                f"{self.layout} test image: {type(exc).__name__}: {str(exc)[:400]}"
            ) from exc
        value = float(score[0])
        if not np.isfinite(value) or not 0.0 <= value <= 1.0:
            raise SafetyModelError(
                f"nsfw model {self.model.uri} gave {value} on a test image, which is not a probability: "
                "set nsfw.activation ('softmax' or 'sigmoid') and nsfw.nsfw_index to match the model's outputs"
            )
        return value

"""What happens to one batch of pool images: decode, score, remove or detect faces and blur.

:class:`SafetyProcessor` holds the loaded models; it runs in the part's own process
(``workers=0``) or once per worker process (see :mod:`tasks.safety.pool`). Images without faces
keep their original bytes, so only blurred images are re-encoded.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tasks.safety.blur import blur_faces
from tasks.safety.config import SafetyConfig
from tasks.safety.faces import Box, FaceDetector, build_face_detector, check_detector
from tasks.safety.models import ModelFile, resolve_model
from tasks.safety.nsfw import NsfwClassifier

REASON_NSFW = "nsfw"
REASON_UNDECODABLE = "undecodable"
STEPS = ("decode", "nsfw", "faces", "blur")
MAX_PIXELS = 16_000 * 16_000


@dataclass(frozen=True)
class SafetyModels:
    """The configured model files, resolved to local paths with their content digests."""

    nsfw: ModelFile | None
    faces: tuple[ModelFile, ...]

    def identity(self) -> dict:
        return {"nsfw": self.nsfw and [self.nsfw.uri, self.nsfw.sha256],
                "faces": [[m.uri, m.sha256] for m in self.faces]}


def resolve_models(cfg: SafetyConfig) -> SafetyModels:
    """Find every enabled model file (downloading s3:// ones into the local cache)."""
    nsfw = resolve_model(cfg.nsfw.model) if cfg.nsfw.enabled else None
    faces = tuple(resolve_model(u) for u in cfg.faces.detectors) if cfg.faces.enabled else ()
    return SafetyModels(nsfw, faces)


@dataclass
class ImageResult:
    """The decision about one image; ``jpg`` is set only when the stored image changed."""

    key: str
    removed: bool
    reason: str = ""
    nsfw_score: float | None = None
    boxes: list[Box] | None = None
    jpg: bytes | None = None
    width: int = 0
    height: int = 0
    error: str | None = None


@dataclass
class BatchResult:
    results: list[ImageResult]
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEPS, 0.0))


def decode(data: bytes) -> tuple[Image.Image | None, str | None]:
    """``(RGB image, None)`` or ``(None, why not)``; never raises on bad bytes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                return None, f"too many pixels ({img.width}x{img.height})"
            img.load()
        return img.convert("RGB"), None
    except Exception as exc:  # Pillow raises many types for corrupt input; all mean "not decodable"
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


class SafetyProcessor:
    """The loaded NSFW classifier and face detector of one process."""

    def __init__(self, cfg: SafetyConfig, models: SafetyModels) -> None:
        self.cfg = cfg
        threads = cfg.threads_per_worker
        self.classifier = NsfwClassifier(models.nsfw, cfg.nsfw, cfg.device, threads) if models.nsfw else None
        self.detector: FaceDetector | None = (
            build_face_detector(list(models.faces), cfg.faces, threads) if models.faces else None
        )

    def check(self) -> None:
        """Probe every model on a dummy image (a misfit is a SafetyModelError)."""
        if self.classifier is not None:
            self.classifier.check()
        if self.detector is not None:
            check_detector(self.detector)

    def process(self, items: list[tuple[str, bytes]]) -> BatchResult:
        out = BatchResult([])
        t = time.perf_counter()
        decoded: list[tuple[ImageResult, Image.Image]] = []
        for key, data in items:
            img, error = decode(data)
            if img is None:
                out.results.append(ImageResult(key, removed=True, reason=REASON_UNDECODABLE, error=error))
                continue
            res = ImageResult(key, removed=False, width=img.width, height=img.height)
            out.results.append(res)
            decoded.append((res, img))
        out.seconds["decode"] += time.perf_counter() - t
        if self.classifier is not None and decoded:
            t = time.perf_counter()
            scores = self.classifier.scores([img for _, img in decoded])
            for (res, _), score in zip(decoded, scores):
                res.nsfw_score = float(score)
                if score > self.cfg.nsfw.threshold:
                    res.removed, res.reason = True, REASON_NSFW
            out.seconds["nsfw"] += time.perf_counter() - t
        if self.detector is not None:
            faces = self.cfg.faces
            for res, img in decoded:
                if res.removed:
                    continue
                t = time.perf_counter()
                boxes = self.detector.detect(np.asarray(img))
                out.seconds["faces"] += time.perf_counter() - t
                if boxes:
                    t = time.perf_counter()
                    blurred, res.boxes = blur_faces(img, boxes, faces.method, faces.strength, faces.margin)
                    res.jpg = encode_jpeg(blurred, faces.jpeg_quality)
                    out.seconds["blur"] += time.perf_counter() - t
                else:
                    res.boxes = []
        return out


def check_models(cfg: SafetyConfig) -> SafetyModels:
    """Resolve, load and probe every enabled model here, before any work is planned."""
    models = resolve_models(cfg)
    SafetyProcessor(cfg, models).check()
    return models

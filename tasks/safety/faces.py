"""Face detection behind one small interface, so a stronger detector is a configuration change.

A :class:`FaceDetector` takes an RGB array and returns face boxes ``(x, y, w, h)`` in its pixel
coordinates. The shipped implementation runs OpenCV cascade classifiers (the Haar cascades in
the opencv-python-headless wheel, or any cascade XML by URI); several cascades are merged by
suppressing boxes that overlap a larger one, so a frontal and a profile hit on one face count once.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from tasks.safety.config import FaceConfig
from tasks.safety.models import ModelFile, SafetyModelError

Box = tuple[int, int, int, int]  # x, y, w, h


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in one RGB image (H x W x 3, uint8)."""

    model_id: str

    def detect(self, rgb: np.ndarray) -> list[Box]:
        ...


def iou(a: Box, b: Box) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


def merge_boxes(boxes: list[Box], overlap: float = 0.3) -> list[Box]:
    """Largest-first suppression: a box overlapping a kept one by more than ``overlap`` IoU, or lying
    mostly inside it, is the same face."""
    kept: list[Box] = []
    for box in sorted(boxes, key=lambda b: (-b[2] * b[3], b)):
        inside = any(iou(box, k) > overlap or _covered(box, k) > 0.7 for k in kept)
        if not inside:
            kept.append(box)
    return sorted(kept)


def _covered(small: Box, big: Box) -> float:
    iw = max(0, min(small[0] + small[2], big[0] + big[2]) - max(small[0], big[0]))
    ih = max(0, min(small[1] + small[3], big[1] + big[3]) - max(small[1], big[1]))
    return iw * ih / max(1, small[2] * small[3])


class CascadeFaceDetector:
    """OpenCV cascade classifiers on the equalised grey image; profile cascades also run mirrored."""

    def __init__(self, models: list[ModelFile], cfg: FaceConfig, threads: int = 1) -> None:
        import cv2

        cv2.setNumThreads(threads)
        self.cfg = cfg
        self.cascades = []
        for model in models:
            try:
                cascade = cv2.CascadeClassifier(model.path)
            except (cv2.error, SystemError) as exc:  # OpenCV reports a malformed XML as either
                raise SafetyModelError(
                    f"face detector {model.uri} is not a loadable OpenCV cascade XML file: {str(exc)[:200]}"
                ) from exc
            if cascade.empty():
                raise SafetyModelError(f"face detector {model.uri} is not a loadable OpenCV cascade XML file")
            self.cascades.append((cascade, model.is_profile_cascade))
        self.model_id = "cascade:" + "+".join(f"{m.uri}@{m.sha256[:12]}" for m in models)

    def detect(self, rgb: np.ndarray) -> list[Box]:
        import cv2

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"detect() takes an H x W x 3 uint8 array, got {rgb.shape} {rgb.dtype}")
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.cfg.detect_max_side / max(gray.shape))
        if scale < 1.0:
            size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        width = gray.shape[1]
        found: list[Box] = []
        for cascade, profile in self.cascades:
            views = [(gray, False)] + ([(cv2.flip(gray, 1), True)] if profile and self.cfg.profile_flip else [])
            for view, flipped in views:
                hits = cascade.detectMultiScale(
                    view, scaleFactor=self.cfg.scale_factor, minNeighbors=self.cfg.min_neighbors,
                    minSize=(self.cfg.min_size, self.cfg.min_size),
                )
                for x, y, w, h in (hits if len(hits) else []):
                    x = width - int(x) - int(w) if flipped else int(x)
                    found.append((x, int(y), int(w), int(h)))
        if scale < 1.0:
            found = [tuple(round(v / scale) for v in box) for box in found]
        return merge_boxes(found)


def build_face_detector(models: list[ModelFile], cfg: FaceConfig, threads: int = 1) -> FaceDetector:
    """The detector for the configured model files (cascade XML today; by suffix, so others can join)."""
    not_xml = [m.uri for m in models if not m.path.lower().endswith(".xml")]
    if not_xml:
        raise SafetyModelError(
            f"face detectors {not_xml} are not OpenCV cascade XML files (.xml), the kind this stage loads"
        )
    return CascadeFaceDetector(models, cfg, threads)


def check_detector(detector: FaceDetector) -> None:
    """Run the detector on one blank image: it must answer with a (probably empty) list of boxes."""
    boxes = detector.detect(np.full((64, 64, 3), 127, np.uint8))
    if not isinstance(boxes, list):
        raise SafetyModelError(f"face detector {detector.model_id} returned {type(boxes).__name__}, not a list")

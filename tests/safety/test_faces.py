"""Face detection and blurring on real photos: faces found where they are, none on ordinary photos,
the blurred region changed beyond recognition and every other pixel left as it was."""

import shutil

import numpy as np
import pytest
from PIL import Image

from storage.uri import join, write_bytes_atomic
from tasks.safety.blur import blur_faces, blur_region
from tasks.safety.config import FaceConfig
from tasks.safety.faces import CascadeFaceDetector, FaceDetector, build_face_detector, iou, merge_boxes
from tasks.safety.models import SafetyModelError, resolve_model
from tests.safety.pool import NO_FACES, photo

ASTRONAUT_FACE = (176, 65, 98, 98)  # Eileen Collins' face in skimage's astronaut (x, y, w, h)
FAST = dict(scale_factor=1.2, detectors=["builtin:haar-frontal-alt2"])


def _detector(**over) -> CascadeFaceDetector:
    cfg = FaceConfig(**{**FAST, **over})
    return build_face_detector([resolve_model(u) for u in cfg.detectors], cfg)


def test_finds_the_astronauts_face_with_the_default_detectors():
    cfg = FaceConfig()
    detector = build_face_detector([resolve_model(u) for u in cfg.detectors], cfg)
    assert isinstance(detector, FaceDetector)
    boxes = detector.detect(photo("astronaut"))
    assert len(boxes) == 1 and iou(boxes[0], ASTRONAUT_FACE) > 0.5
    assert len(detector.detect(photo("camera"))) == 1  # the cameraman, turned away: the profile cascade's


def test_no_faces_on_ordinary_photos():
    detector = _detector()
    found = {name: detector.detect(photo(name)) for name in NO_FACES[:5]}
    assert found == {name: [] for name in NO_FACES[:5]}


def test_large_images_are_searched_scaled_down_and_boxes_map_back():
    big = np.asarray(Image.fromarray(photo("astronaut")).resize((1024, 1024), Image.Resampling.BILINEAR))
    (box,) = _detector(detect_max_side=512).detect(big)
    assert iou(box, tuple(2 * v for v in ASTRONAUT_FACE)) > 0.5


@pytest.mark.parametrize("method", ["gaussian", "pixelate"])
def test_blur_changes_the_face_and_nothing_else(method):
    img = Image.fromarray(photo("astronaut"))
    boxes = _detector().detect(photo("astronaut"))
    blurred, regions = blur_faces(img, boxes, method, strength=0.25, margin=0.15)
    assert regions == [blur_region(boxes[0], img.width, img.height, 0.15)]
    x, y, w, h = regions[0]
    before, after = np.asarray(img, np.int16), np.asarray(blurred, np.int16)
    face_diff = np.abs(after[y:y + h, x:x + w] - before[y:y + h, x:x + w]).mean()
    assert face_diff > 12, face_diff
    # the blurred face keeps little fine detail: its gradient energy collapses
    grad = lambda a: np.abs(np.diff(a[y:y + h, x:x + w].mean(axis=2), axis=1)).mean()
    assert grad(after) < 0.35 * grad(before)
    outside = np.ones(before.shape[:2], bool)
    outside[y:y + h, x:x + w] = False
    assert np.array_equal(after[outside], before[outside])


def test_blur_region_grows_by_margin_and_stays_inside():
    assert blur_region((10, 10, 20, 40), 100, 100, 0.25) == (5, 0, 30, 60)
    assert blur_region((90, 90, 20, 20), 100, 100, 0.0) == (90, 90, 10, 10)


def test_merge_keeps_one_box_per_face():
    assert merge_boxes([(10, 10, 50, 50), (14, 12, 44, 44), (200, 200, 30, 30)]) == [(10, 10, 50, 50),
                                                                                      (200, 200, 30, 30)]


def test_cascade_by_uri_local_and_s3(tmp_path, s3_root):
    builtin = resolve_model("builtin:haar-frontal-alt2")
    local = tmp_path / "my-faces.xml"
    shutil.copy(builtin.path, local)
    remote = join(s3_root, "models", "my-faces.xml")
    write_bytes_atomic(remote, local.read_bytes())
    cfg = FaceConfig(scale_factor=1.2)
    expected = _detector().detect(photo("astronaut"))
    for uri in (f"file://{local}", remote):
        model = resolve_model(uri)
        assert model.sha256 == builtin.sha256
        assert build_face_detector([model], cfg).detect(photo("astronaut")) == expected


def test_bad_face_models_are_configuration_errors(tmp_path):
    with pytest.raises(SafetyModelError, match="does not exist"):
        resolve_model(f"file://{tmp_path}/missing.xml")
    junk = tmp_path / "junk.xml"
    junk.write_text("<opencv_storage><nothing/></opencv_storage>")
    with pytest.raises(SafetyModelError, match="not a loadable OpenCV cascade"):
        build_face_detector([resolve_model(str(junk))], FaceConfig())
    onnx = tmp_path / "faces.onnx"
    onnx.write_bytes(b"\x08\x07")
    with pytest.raises(SafetyModelError, match="cascade XML"):
        build_face_detector([resolve_model(str(onnx))], FaceConfig())
    with pytest.raises(SafetyModelError, match="unknown builtin"):
        resolve_model("builtin:retinaface")

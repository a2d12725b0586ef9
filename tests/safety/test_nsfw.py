"""NSFW scoring: the shipped open_nsfw model on ordinary photos, user models by URI, bad models refused."""

import numpy as np
import pytest
from PIL import Image

from storage.uri import join, write_bytes_atomic
from tasks.safety.config import NsfwConfig, SafetyConfig
from tasks.safety.models import SafetyModelError, resolve_model
from tasks.safety.nsfw import NsfwClassifier
from tasks.safety.process import check_models
from tests.safety.models import BrightnessScore, FixedLinear, save_torchscript
from tests.safety.pool import FACES, NO_FACES, photo

ALL = FACES + NO_FACES
BRIGHT = dict(input_size=32, mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), layout="nchw", nsfw_index=0,
              activation="sigmoid", threshold=0.5)


@pytest.fixture(scope="module")
def open_nsfw():
    return NsfwClassifier(resolve_model("builtin:open-nsfw"), NsfwConfig())


def test_no_ordinary_photo_is_removed_at_the_default_threshold(open_nsfw):
    scores = open_nsfw.scores([Image.fromarray(photo(n)) for n in ALL])
    assert scores.shape == (len(ALL),) and np.all((scores >= 0) & (scores <= 1))
    assert scores.max() < 0.5 * NsfwConfig().threshold, dict(zip(ALL, scores.round(4)))
    assert open_nsfw.layout == "nhwc" and 0 <= open_nsfw.check() < 0.5


def test_onnx_model_by_s3_uri_scores_like_the_builtin(open_nsfw, s3_root):
    uri = join(s3_root, "models", "open-nsfw.onnx")
    with open(open_nsfw.model.path, "rb") as f:
        write_bytes_atomic(uri, f.read())
    model = resolve_model(uri)
    assert model.sha256 == open_nsfw.model.sha256
    # a user's ONNX file gets ImageNet defaults; spelling out open_nsfw's preprocessing reproduces the builtin
    cfg = NsfwConfig(model=uri, resize=256, channel_order="bgr", mean=(104, 117, 123), std=(1, 1, 1),
                     activation="none")
    images = [Image.fromarray(photo(n)) for n in ("astronaut", "coffee")]
    assert np.allclose(NsfwClassifier(model, cfg).scores(images), open_nsfw.scores(images), atol=1e-5)


def test_torchscript_model_removes_what_it_scores_over_the_threshold(tmp_path):
    path = save_torchscript(BrightnessScore(32), tmp_path / "bright.pt")
    clf = NsfwClassifier(resolve_model(f"file://{path}"), NsfwConfig(model=f"file://{path}", **BRIGHT))
    scores = dict(zip(ALL, clf.scores([Image.fromarray(photo(n)) for n in ALL])))
    brightness = {n: np.asarray(Image.fromarray(photo(n)).resize((32, 32), Image.Resampling.BILINEAR)).mean() / 255
                  for n in ALL}
    bright = {n for n, b in brightness.items() if b > 0.6}
    assert {n for n, s in scores.items() if s > 0.5} == bright
    assert "page" in bright and "coffee" not in bright


def test_missing_or_unreadable_models_fail_before_any_work(tmp_path):
    with pytest.raises(SafetyModelError, match="does not exist"):
        check_models(SafetyConfig(nsfw=NsfwConfig(model=str(tmp_path / "nope.onnx")), faces={"enabled": False}))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(SafetyModelError, match="not a loadable ONNX model"):
        check_models(SafetyConfig(nsfw=NsfwConfig(model=str(junk)), faces={"enabled": False}))
    torn = tmp_path / "torn.pt"
    torn.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SafetyModelError, match="not a loadable TorchScript model"):
        check_models(SafetyConfig(nsfw=NsfwConfig(model=str(torn)), faces={"enabled": False}))


def test_models_whose_input_does_not_fit_fail_on_the_probe(tmp_path):
    path = save_torchscript(FixedLinear(32), tmp_path / "linear32.pt")
    with pytest.raises(SafetyModelError, match="failed on a 64x64 nchw test image"):
        check_models(SafetyConfig(nsfw=NsfwConfig(model=path, input_size=64), faces={"enabled": False}))
    check_models(SafetyConfig(nsfw=NsfwConfig(model=path, input_size=32), faces={"enabled": False}))
    with pytest.raises(SafetyModelError, match="takes 224x224 inputs"):
        check_models(SafetyConfig(nsfw=NsfwConfig(input_size=256, resize=288), faces={"enabled": False}))
    with pytest.raises(SafetyModelError, match="not a probability"):
        logits = save_torchscript(BrightnessScore(32, pivot=-1.0), tmp_path / "b.pt")
        check_models(SafetyConfig(nsfw=NsfwConfig(model=logits, **{**BRIGHT, "activation": "none"}),
                                  faces={"enabled": False}))
    with pytest.raises(SafetyModelError, match="nsfw_index is 3"):
        check_models(SafetyConfig(nsfw=NsfwConfig(model=path, input_size=32, nsfw_index=3), faces={"enabled": False}))

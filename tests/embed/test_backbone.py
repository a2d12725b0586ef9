import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from models import hub
from models.official_weights import project_to_official
from models.presets import build_vit
from tasks.datasets import fashion_mnist
from tasks.embed.backbone import load_embedder
from tasks.embed.preprocess import Preprocess


@pytest.fixture(scope="module")
def images():
    data = fashion_mnist.load("test").subset(6, seed=0)
    return [Image.fromarray(a).convert("RGB") for a in data.images]


def batch(embedder, imgs):
    return torch.stack([embedder.preprocess(i) for i in imgs])


def test_preprocess_resizes_short_side_then_center_crops():
    img = Image.fromarray(np.arange(40 * 60, dtype=np.uint8).reshape(40, 60) % 251).convert("RGB")
    t = Preprocess(20, 24)(img)
    assert t.shape == (3, 20, 20)
    ref = np.asarray(img.resize((36, 24), Image.BICUBIC), np.float32)[2:22, 8:28] / 255.0
    ref = (ref - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    np.testing.assert_allclose(t.numpy(), ref.transpose(2, 0, 1), atol=1e-5)


def test_pixel_descriptor_is_the_centred_normalised_grayscale_crop(images):
    emb = load_embedder("pixels:16")
    out = emb(batch(emb, images))
    assert out.shape == (6, 256) and emb.dim == 256 and emb.model_id == "pixels:16"
    ref = np.stack([np.asarray(i.convert("L").resize((16, 16), Image.BICUBIC), np.float32).ravel() / 255 for i in images])
    ref -= ref.mean(axis=1, keepdims=True)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)
    assert emb.checksum == hashlib.sha256(b"pixels:16").hexdigest()


def test_random_vit_is_seeded_and_matches_the_model(images):
    a = load_embedder("random:vit_pico@3", image_size=28)
    b = load_embedder("random:vit_pico@3", image_size=28)
    c = load_embedder("random:vit_pico@4", image_size=28)
    assert a.checksum == b.checksum != c.checksum
    x = batch(a, images)
    assert x.shape[-1] == 28 and a.dim == 64
    torch.testing.assert_close(a(x), b(x))
    torch.manual_seed(3)
    ref = build_vit("vit_pico").eval()
    with torch.no_grad():
        cls = ref.forward_features(x)["x_norm_clstoken"]
    torch.testing.assert_close(a(x), torch.nn.functional.normalize(cls, dim=1), atol=1e-5, rtol=1e-5)
    pooled = load_embedder("random:vit_pico@3", image_size=28, features="cls+avgpool")
    out = pooled(x)
    assert out.shape == (6, 128)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(6))


def test_image_size_is_rounded_to_the_patch_size():
    assert load_embedder("random:vit_pico", image_size=30).image_size == 28


def _reference_features(model, x):
    model.eval()
    with torch.no_grad():
        return torch.nn.functional.normalize(model.forward_features(x)["x_norm_clstoken"], dim=1)


def test_project_checkpoint_loads(tmp_path, images):
    torch.manual_seed(0)
    model = build_vit("vit_pico", num_register_tokens=2, img_size=56)
    path = tmp_path / "ckpt.pt"
    torch.save({"model_config": {"name": "vit_pico", "num_register_tokens": 2, "img_size": 56},
                "backbone": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, path)
    assert load_embedder(str(path)).image_size == 56  # the training resolution by default
    emb = load_embedder(str(path), image_size=28)
    x = batch(emb, images)
    torch.testing.assert_close(emb(x), _reference_features(model, x), atol=1e-5, rtol=1e-5)
    assert emb.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    assert emb.model_id.startswith("checkpoint:vit_pico")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg"])
def test_official_state_dict_is_recognised_and_loaded(tmp_path, images, name):
    torch.manual_seed(1)
    model = getattr(hub, name)()
    path = tmp_path / f"{name}_pretrain.pth"
    torch.save(project_to_official(model), path)
    emb = load_embedder(f"file://{path}", image_size=28)
    assert emb.model_id == name and emb.dim == 384
    x = batch(emb, images[:2])
    torch.testing.assert_close(emb(x), _reference_features(model, x), atol=1e-5, rtol=1e-5)


class _TinyCNN(torch.nn.Module):
    """A descriptor network shaped like SSCD's exports: conv trunk, global pooling, projection."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.proj = torch.nn.Linear(8, 12)

    def forward(self, x):
        return self.proj(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_torchscript_archive_is_detected(tmp_path, images):
    torch.manual_seed(2)
    net = _TinyCNN().eval()
    path = tmp_path / "sscd_like.torchscript.pt"
    torch.jit.script(net).save(str(path))
    emb = load_embedder(str(path), image_size=32)
    assert emb.model_id == "torchscript:sscd_like.torchscript.pt" and emb.dim == 12
    x = batch(emb, images)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(net(x), dim=1)
    torch.testing.assert_close(emb(x), ref, atol=1e-5, rtol=1e-5)
    assert emb.checksum == hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_specs_and_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_embedder(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="bad backbone spec"):
        load_embedder("random:")
    with pytest.raises(KeyError):
        load_embedder("random:vit_unknown")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither"):
        load_embedder(str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="patch tokens"):
        load_embedder("pixels:8", features="cls+avgpool")

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.dedup.config import DedupConfig
from tasks.dedup.embedder import check_embedder, load_copy_embedder
from tasks.dedup.sscd import CopyModelError, SscdEmbedder, sscd_input_size


class TinyDescriptor(torch.nn.Module):
    """A small conv net with global average pooling: the call shape of an SSCD TorchScript file."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, dim, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3)) + 0.01


class WrongShape(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class PerImage(torch.nn.Module):
    """Describes each image of the batch on its own: traced, the split keeps the example's batch size."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(self.conv(p)).mean(dim=(2, 3)) + 0.01 for p in torch.split(x, [1] * x.shape[0])])


class FlattenByBatch(torch.nn.Module):
    """Reshapes by the batch size: traced, the size is a constant and other batches come back with wrong rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :4, :4].reshape(int(x.shape[0]), -1) + 0.01


def _save(module, path):
    torch.manual_seed(0)
    torch.jit.script(module).save(str(path))
    return str(path)


def test_torchscript_model_loads_and_gives_normalised_descriptors(tmp_path):
    torch.manual_seed(0)
    uri = _save(TinyDescriptor(), tmp_path / "tiny.torchscript.pt")
    emb = load_copy_embedder(DedupConfig(copy_model=uri))
    assert isinstance(emb, SscdEmbedder) and emb.dim == 16 and emb.model_id == "sscd:tiny.torchscript.pt"
    check_embedder(emb)
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in ((300, 200), (200, 300), (300, 200))]
    out = emb(imgs)
    assert out.shape == (3, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # Batching by size gives the same descriptor as one image at a time.
    np.testing.assert_allclose(out[1], emb([imgs[1]])[0], atol=1e-6)
    # Square mode squashes to 320x320.
    sq = SscdEmbedder(uri, resize="square320")
    assert sq(imgs).shape == (3, 16)


def test_resize_follows_the_sscd_recipe():
    assert sscd_input_size(400, 300, "short288") == (384, 288)
    assert sscd_input_size(300, 500, "short288") == (288, 480)
    assert sscd_input_size(123, 77, "square320") == (320, 320)


def test_missing_or_malformed_models_fail_before_any_work(tmp_path):
    with pytest.raises(CopyModelError, match="does not exist"):
        load_copy_embedder(DedupConfig(copy_model=str(tmp_path / "absent.pt")))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(CopyModelError, match="neither a TorchScript file nor a model lvd loads"):
        load_copy_embedder(DedupConfig(copy_model=str(junk)))
    with pytest.raises(CopyModelError, match="returns shape"):
        load_copy_embedder(DedupConfig(copy_model=_save(WrongShape(), tmp_path / "wrong.pt")))
    with pytest.raises(CopyModelError, match="expected 512"):
        SscdEmbedder(_save(TinyDescriptor(), tmp_path / "t.pt"), expected_dim=512)
    with pytest.raises(CopyModelError, match="unknown built-in"):
        load_copy_embedder(DedupConfig(copy_model="builtin:nope"))


def test_model_is_read_from_s3(tmp_path, s3_root):
    from storage.uri import join, write_bytes_atomic

    local = _save(TinyDescriptor(), tmp_path / "tiny.pt")
    uri = join(s3_root, "models", "tiny.torchscript.pt")
    write_bytes_atomic(uri, open(local, "rb").read())
    emb = load_copy_embedder(DedupConfig(copy_model=uri))
    assert emb.dim == 16
    check_embedder(emb)


def test_a_model_traced_at_one_batch_size_is_refused_with_the_cause(tmp_path):
    torch.manual_seed(0)
    traced = tmp_path / "traced4.torchscript.pt"
    torch.jit.trace(PerImage().eval(), torch.zeros(4, 3, 64, 64)).save(str(traced))
    with pytest.raises(CopyModelError) as err:
        load_copy_embedder(DedupConfig(copy_model=str(traced)))
    msg = str(err.value)
    assert "only works at the batch size it was traced with" in msg and "a batch of 4" in msg
    assert "split_with_sizes" in msg and "torch.jit.script" in msg
    reshaped = tmp_path / "reshape.torchscript.pt"
    torch.jit.trace(FlattenByBatch(), torch.zeros(4, 3, 64, 64)).save(str(reshaped))
    with pytest.raises(CopyModelError, match=r"traced with: a batch of 1 gives \(4, 12\)"):
        load_copy_embedder(DedupConfig(copy_model=str(reshaped)))
    # The same module scripted (or traced where nothing depends on the batch size) loads and works.
    scripted = _save(PerImage(), tmp_path / "scripted.torchscript.pt")
    emb = load_copy_embedder(DedupConfig(copy_model=scripted))
    check_embedder(emb)
    assert emb.dim == 8

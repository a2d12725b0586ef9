"""Any model lvd loads is a copy model: CLS + GeM-pooled patch tokens, L2-normalised."""

import numpy as np
import pytest
import torch
from PIL import Image

import lvd
from models.pooling import cls_gem_feature, gem
from tasks.dedup.config import DedupConfig
from tasks.dedup.embedder import check_embedder, load_copy_embedder
from tasks.dedup.model_copy import ModelCopyEmbedder
from tasks.dedup.sscd import CopyModelError, to_tensor
from tasks.train.export import export_teacher_backbone
from tasks.train.run import run_training
from tests.dedup.photos import photos
from tests.train.conftest import needs_fashion_mnist, tiny_config


def test_gem_is_the_signed_power_mean():
    x = torch.tensor([[[1.0, -2.0], [3.0, 0.5], [-1.0, -1.0]]])  # (1 image, 3 tokens, 2 channels)
    ref = []
    for c in range(2):
        m = np.mean([v ** 3 for v in x[0, :, c].tolist()])
        ref.append(np.sign(m) * abs(m) ** (1 / 3))
    torch.testing.assert_close(gem(x, 3.0, dim=1), torch.tensor([ref], dtype=torch.float32))
    pos = torch.rand(4, 9, 5) + 0.1  # on non-negative tokens it is SSCD's mean(x^p)^(1/p)
    torch.testing.assert_close(gem(pos, 3.0), pos.pow(3).mean(dim=1).pow(1 / 3))
    torch.testing.assert_close(gem(pos, 1.0), pos.mean(dim=1))
    assert (gem(pos, 3.0) >= pos.mean(dim=1)).all() and (gem(pos, 3.0) <= pos.amax(dim=1)).all()
    with pytest.raises(ValueError):
        gem(pos, 0.0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A vit_pico run of two real training steps and its exported backbone.pt."""
    path = tmp_path_factory.mktemp("copy-run") / "tiny"
    run_training(tiny_config(optim=dict(total_steps=2)), f"file://{path}", log=lambda m: None)
    return f"file://{path}", export_teacher_backbone(f"file://{path}")


@needs_fashion_mnist
def test_a_trained_run_and_its_backbone_file_are_copy_models(tiny_run):
    run_uri, backbone_uri = tiny_run
    by_run = load_copy_embedder(DedupConfig(copy_model=run_uri))
    by_file = load_copy_embedder(DedupConfig(copy_model=backbone_uri))
    for emb in (by_run, by_file):
        assert isinstance(emb, ModelCopyEmbedder) and emb.dim == 128 and emb.size == 28
        check_embedder(emb)
    assert by_file.checksum != by_run.checksum and len(by_file.checksum) == 64
    imgs = [img for _, img in photos()[:4]]
    out = by_run(imgs)
    assert out.shape == (4, 128) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(by_file(imgs), out, atol=1e-5)
    # The feature, rebuilt from the model lvd.load returns: whole image squashed to 28x28, CLS + GeM.
    backbone = lvd.load(run_uri)
    with torch.inference_mode():
        feats = backbone.forward_features(torch.stack([to_tensor(im, (28, 28)) for im in imgs]))
    cls = feats["x_norm_clstoken"] / feats["x_norm_clstoken"].norm(dim=1, keepdim=True)
    pooled = gem(feats["x_norm_patchtokens"], 3.0)
    pooled = pooled / pooled.norm(dim=1, keepdim=True)
    ref = torch.cat([cls, pooled], dim=1) / np.sqrt(2.0)
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)
    torch.testing.assert_close(cls_gem_feature(feats), ref, atol=1e-5, rtol=0)
    # Batches do not change an image's descriptor.
    np.testing.assert_allclose(by_run([imgs[2]])[0], out[2], atol=1e-5)


def test_files_that_are_no_model_are_refused_by_name(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(CopyModelError, match="neither a TorchScript file nor a model lvd loads"):
        load_copy_embedder(DedupConfig(copy_model=str(junk)))
    state = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(3)}, state)
    with pytest.raises(CopyModelError, match=r"holds a dict with keys \['weight'\]"):
        load_copy_embedder(DedupConfig(copy_model=str(state)))
    with pytest.raises(CopyModelError, match="does not exist"):
        load_copy_embedder(DedupConfig(copy_model=f"file://{tmp_path}/no-run"))

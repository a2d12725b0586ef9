import io

import numpy as np
from PIL import Image

from tasks.dedup.pca_hash import PcaHash, dct_features, fit_pca_hash
from tasks.dedup.phash import gray_thumbnails
from tests.dedup.photos import photos


def _jpeg_roundtrip(img, quality):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _training_thumbs():
    """Real photos plus their quadrants: enough distinct images to fit 64 directions."""
    imgs = []
    for _, img in photos():
        w, h = img.size
        imgs.append(img)
        imgs += [img.crop(box) for box in ((0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h))]
    return gray_thumbnails(imgs)


def test_features_are_unit_norm_and_ignore_brightness_and_contrast():
    img = photos()[0][1]
    thumbs = gray_thumbnails([img])
    brighter = np.clip(thumbs.astype(np.float64) * 0.8 + 30, 0, 255).astype(np.uint8)
    f = dct_features(thumbs, 16)
    g = dct_features(brighter, 16)
    assert abs(np.linalg.norm(f) - 1) < 1e-5
    assert float(f[0] @ g[0]) > 0.999


def test_fit_is_deterministic_balanced_and_survives_serialisation():
    thumbs = _training_thumbs()
    model = fit_pca_hash(thumbs, 64)
    again = fit_pca_hash(thumbs, 64)
    assert model.digest() == again.digest()
    restored = PcaHash.from_bytes(model.to_bytes())
    assert restored.digest() == model.digest()
    codes = model.encode(thumbs)
    assert codes.shape == (len(thumbs), 8)
    assert (restored.encode(thumbs) == codes).all()
    # Each bit splits the training set near its median.
    ones = np.unpackbits(codes, axis=1).mean(axis=0)
    assert ones.min() > 0.35 and ones.max() < 0.65
    # Components are orthonormal directions.
    np.testing.assert_allclose(model.components @ model.components.T, np.eye(64), atol=1e-4)


def test_reencoded_and_resized_copies_stay_close_distinct_photos_stay_far():
    model = fit_pca_hash(_training_thumbs(), 64)
    imgs = [img for _, img in photos()]
    base = model.encode(gray_thumbnails(imgs))
    copies = model.encode(gray_thumbnails([_jpeg_roundtrip(i.resize((i.width // 2, i.height // 2)), 40) for i in imgs]))
    same = np.unpackbits(base ^ copies, axis=1).sum(axis=1)
    bits = np.unpackbits(base, axis=1).astype(np.int16)
    cross = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)[np.triu_indices(len(imgs), 1)]
    assert np.median(same) <= 4
    assert same.max() <= 10
    assert cross.min() > same.max()

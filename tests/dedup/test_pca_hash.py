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


def _stage_codes(stage, items):
    from storage.tables import read_table
    from storage.uri import join
    from tasks.dedup.parts import load_npy, part_uri

    keep = read_table(join(stage, "keep.parquet")).to_pylist()
    codes = {}
    for shard in sorted({r["shard"] for r in keep}):
        keys = [r["key"] for r in keep if r["shard"] == shard]
        codes.update(zip(keys, load_npy(part_uri(stage, shard, "codes.npy")).tolist()))
    return {r["key"]: r for r in keep}, codes


def test_a_reference_trained_hash_codes_the_pool_whatever_else_it_holds(tmp_path):
    """Trained on fixed reference images, the PCA hash gives the same codes and decisions to the same
    images in a pool with or without unrelated extra images; a later version reuses the model file."""
    import pytest

    from storage.commit import read_commit
    from tasks.dedup.config import DedupConfig
    from tasks.dedup.planted import PlantedImage, write_crawl_stage
    from tasks.dedup.stage import run_dedup

    ref = tmp_path / "reference"
    ref.mkdir()
    for i, thumb in enumerate(_training_thumbs()):
        Image.fromarray(thumb).save(ref / f"{i:04d}.png")
    small = [(name, img.resize((img.width // 2, img.height // 2))) for name, img in photos()[:20]]
    pool = [PlantedImage(f"p{i:04d}", name, "original", _jpeg_bytes(img)) for i, (name, img) in enumerate(small)]
    pool += [PlantedImage(f"c{i:04d}", name, "reencode", _jpeg_bytes(img, 40)) for i, (name, img) in enumerate(small[:6])]
    extra = [PlantedImage(f"x{i:04d}", f"extra{i}", "original", _jpeg_bytes(img.rotate(90, expand=True)))
             for i, (_, img) in enumerate(small[6:])]
    cfg = DedupConfig(hash_radius=8, copy_model=None, hash_reference=[str(ref)])
    decisions, codes, commits = [], [], []
    for name, items in (("alone", pool), ("with-extra", pool + extra)):
        write_crawl_stage(str(tmp_path / name / "crawl"), items, shard_size=40)
        commits.append(run_dedup(str(tmp_path / name / "crawl"), str(tmp_path / name / "dedup"), cfg, None))
        keep, c = _stage_codes(str(tmp_path / name / "dedup"), items)
        decisions.append({it.key: (keep[it.key]["kept"], keep[it.key]["reason"]) for it in pool})
        codes.append({it.key: c[it.key] for it in pool})
    assert codes[0] == codes[1] and decisions[0] == decisions[1]
    assert commits[0]["extra"]["pca_digest"] == commits[1]["extra"]["pca_digest"]
    assert commits[0]["extra"]["pca_source"] == "reference"
    # A later version names the first one's model file and codes images exactly as it did.
    model = str(tmp_path / "alone" / "dedup" / "pca_hash.npz")
    later = run_dedup(str(tmp_path / "with-extra" / "crawl"), str(tmp_path / "later"),
                      DedupConfig(hash_radius=8, copy_model=None, hash_model=model), None)
    assert later["extra"]["pca_digest"] == commits[0]["extra"]["pca_digest"]
    assert later["extra"]["pca_source"] == f"model:{model}"
    assert read_commit(str(tmp_path / "later"))["counts"] == commits[1]["counts"]
    with pytest.raises(ValueError, match="has 64 bits; dedup.hash_bits is 128"):
        run_dedup(str(tmp_path / "alone" / "crawl"), str(tmp_path / "wrong-bits"),
                  DedupConfig(hash_radius=8, hash_bits=128, copy_model=None, hash_model=model), None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_dedup(str(tmp_path / "alone" / "crawl"), str(tmp_path / "missing"),
                  DedupConfig(copy_model=None, hash_model=str(tmp_path / "nope.npz")), None)


def _jpeg_bytes(img, quality=90):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()

"""One decode for pool and evaluation images, grey copies scored as in colour, pHash equal to imagehash."""

import io

import imagehash
import numpy as np
from PIL import Image

from storage.tables import read_table
from storage.uri import join
from tasks.crawl.imaging import ImageParams, process_image
from tasks.dedup.config import DedupConfig
from tasks.dedup.decode import decode_working, trim_uniform_border, working_size
from tasks.dedup.descriptor import DctColourEmbedder
from tasks.dedup.embedder import load_copy_embedder
from tasks.dedup.knn import grey_aware
from tasks.dedup.parts import load_npy, part_uri
from tasks.dedup.planted import PlantedImage, write_crawl_stage
from tasks.dedup.stage import run_dedup
from tests.dedup.photos import photos

import faiss


def _jpeg(img, quality=92):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _colour_photos():
    from tasks.dedup.decode import is_grey

    return [(name, img) for name, img in photos() if not is_grey(img)]


def test_working_size_depends_on_shape_not_resolution():
    assert working_size(1024, 768, 64) == working_size(512, 384, 64) == (256, 192)
    assert working_size(100, 80, 64) == (100, 80)  # never enlarged
    assert working_size(2000, 200, 64) == (640, 64)  # the short side keeps the descriptor's minimum


def test_grey_copy_of_a_colour_photo_scores_as_its_colour_copy():
    emb = DctColourEmbedder()
    pics = _colour_photos()
    assert len(pics) >= 10
    imgs = [img for _, img in pics]
    greys = [decode_working(_jpeg(img.convert("L")), 64)[1] for img in imgs]
    colour, grey = emb(imgs), emb(greys)
    raw = np.einsum("ij,ij->i", colour, grey)
    assert raw.max() <= emb.grey_pair_cap + 1e-4  # the colour part alone caps the plain cosine
    index = grey_aware(faiss.IndexFlatIP(emb.dim), emb)
    index.add(colour)
    sims, nbrs = index.search(grey, 1)
    assert (nbrs[:, 0] == np.arange(len(imgs))).all()
    assert np.median(sims[:, 0]) > 0.99 and sims[:, 0].min() > 0.96
    # Colour/colour and grey/grey scores are the plain cosines.
    s, j = index.search(colour, 1)
    np.testing.assert_allclose(s[:, 0], 1.0, atol=1e-5)
    both = grey_aware(faiss.IndexFlatIP(emb.dim), emb)
    both.add(grey)
    s, j = both.search(grey, 2)
    np.testing.assert_allclose(s[:, 1], np.sort(grey @ grey.T, axis=1)[:, -2], atol=1e-5)


def test_stage_groups_grey_copies_at_the_strict_preset_threshold(tmp_path):
    pics = _colour_photos()[:8]
    items = []
    for name, img in pics:
        items.append(PlantedImage(f"k{len(items):03d}", name, "original", _jpeg(img)))
        items.append(PlantedImage(f"k{len(items):03d}", name, "grey", _jpeg(img.convert("L"))))
    crawl = str(tmp_path / "crawl")
    write_crawl_stage(crawl, items, shard_size=8)
    cfg = DedupConfig(hash_method="none", exact=False, copy_threshold=0.96)  # cpu-tiny's threshold
    stage = str(tmp_path / "dedup")
    run_dedup(crawl, stage, cfg, load_copy_embedder(cfg))
    keep = {r["key"]: r for r in read_table(join(stage, "keep.parquet")).to_pylist()}
    for it in items:
        if it.edit == "grey":
            assert keep[it.key]["reason"] == "copy", (it.source, keep[it.key])
            assert keep[it.key]["score"] > 0.96
        else:
            assert keep[it.key]["kept"], it.source


def test_an_evaluation_photo_matches_its_crawled_copy(tmp_path):
    """The evaluation file is the photo at 800 px; the pool holds what the crawl made of it (512 px).
    Draft decoding alone read the two at 1/8 and 1/4 scale (100 vs 128 px): cosine 0.95 on
    opencv's ela_original.jpg, 0.987 on starry_night.jpg."""
    pics = photos()
    params = ImageParams(16_000 * 16_000, 16, 10.0, 512, 90)
    eval_dir = tmp_path / "evalset"
    eval_dir.mkdir()
    items = []
    for i, (name, img) in enumerate(pics):
        img = img.copy()
        img.thumbnail((800, 800))
        data = _jpeg(img)
        (eval_dir / f"{i:03d}.jpg").write_bytes(data)
        items.append(PlantedImage(f"k{i:03d}", name, "original", process_image(data, params).jpeg))
    crawl = str(tmp_path / "crawl")
    shards = write_crawl_stage(crawl, items, shard_size=20)
    emb = DctColourEmbedder()
    descs = []
    from storage.shards import iter_samples

    stored = {key: fields["jpg"] for url in shards for key, fields in iter_samples(url)}
    for it in items:
        pool_img = decode_working(stored[it.key], 64)[1]
        eval_img = decode_working((eval_dir / f"{it.key[1:]}.jpg").read_bytes(), 64)[1]
        descs.append(emb([trim_uniform_border(pool_img), trim_uniform_border(eval_img)]))
    sims = np.array([float(d[0] @ d[1]) for d in descs])
    assert sims.min() > 0.99, sims
    # Through the stage, at cpu-tiny's strict eval threshold, every pool image goes as eval-set.
    cfg = DedupConfig(hash_method="none", exact=False, eval_threshold=0.985, eval_sets=[str(eval_dir)])
    stage = str(tmp_path / "dedup")
    commit = run_dedup(crawl, stage, cfg, load_copy_embedder(cfg))
    assert commit["counts"].get("removed_eval-set") == len(items)


def test_stage_phash_codes_equal_imagehash_of_the_stored_files(tmp_path):
    items = [PlantedImage(f"k{i:03d}", name, "original", _jpeg(img)) for i, (name, img) in enumerate(photos())]
    crawl = str(tmp_path / "crawl")
    shards = write_crawl_stage(crawl, items, shard_size=len(items))
    cfg = DedupConfig(hash_method="phash", copy_model=None)
    stage = str(tmp_path / "dedup")
    run_dedup(crawl, stage, cfg, None)
    from storage.shards import iter_samples, shard_name

    stored = [fields["jpg"] for _, fields in iter_samples(shards[0])]
    ref = np.array([imagehash.phash(Image.open(io.BytesIO(b))).hash.flatten() for b in stored])
    codes = load_npy(part_uri(stage, shard_name(shards[0]), "codes.npy"))
    assert len(stored) == len(items) >= 20
    assert (np.unpackbits(codes, axis=1).astype(bool) == ref).all()

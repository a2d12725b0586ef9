import io
import os

import numpy as np
import pytest
from PIL import Image

from storage.commit import read_commit
from storage.tables import SCHEMAS, read_table
from storage.uri import join
from tasks.dedup.config import DedupConfig
from tasks.dedup.embedder import load_copy_embedder
from tasks.dedup.parts import dedup_shard_part, part_uri
from tasks.dedup.planted import planted_pool, write_crawl_stage
from tasks.dedup.report import contact_sheet_png, dedup_report, reason_counts_markdown
from tasks.dedup.sscd import CopyModelError
from tasks.dedup.stage import dedup_finalize, dedup_prepare, run_dedup


@pytest.fixture(scope="module")
def pool():
    items = planted_pool(n_with_copies=6, edits=("exact", "reencode", "resize", "colour"), seed=3)
    return items


def _crawl(tmp_path, items, extra=None, shard_size=40):
    crawl = str(tmp_path / "crawl")
    write_crawl_stage(crawl, items, shard_size=shard_size, extra_samples=extra)
    return crawl


def _jpeg(img, quality=70):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_stage_removes_planted_copies_records_corrupt_and_commits(tmp_path, pool):
    crawl = _crawl(tmp_path, pool, {"broken-0001": {"jpg": b"\xff\xd8 truncated", "json": {"sha256": "ab" * 32}}})
    stage = str(tmp_path / "dedup")
    cfg = DedupConfig(hash_radius=8)
    commit = run_dedup(crawl, stage, cfg, load_copy_embedder(cfg))
    keep = read_table(join(stage, "keep.parquet"), SCHEMAS["dedup.keep"]).to_pylist()
    assert len(keep) == len(pool) + 1
    by_key = {r["key"]: r for r in keep}
    assert by_key["broken-0001"]["reason"] == "corrupt" and not by_key["broken-0001"]["kept"]
    assert "undecodable" in by_key["broken-0001"]["error"]
    # Exactly one image per source photo survives, and every survivor is a different photo.
    kept_sources = [it.source for it in pool if by_key[it.key]["kept"]]
    assert sorted(kept_sources) == sorted({it.source for it in pool})
    # Byte-identical copies go as sha256 duplicates (or fall with their group at the hash level).
    for it in pool:
        row = by_key[it.key]
        if not row["kept"]:
            assert row["reason"] in ("sha256", "pca-hash", "copy")
            assert row["representative"] is not None and row["group_id"] is not None
    counts = commit["counts"]
    assert counts["pool"] == len(pool) + 1 and counts["kept"] == len(kept_sources)
    assert counts["removed_corrupt"] == 1 and counts.get("removed_sha256", 0) >= 1
    assert read_commit(stage)["counts"] == counts
    groups = read_table(join(stage, "groups.parquet"), SCHEMAS["dedup.groups"]).to_pylist()
    assert len(groups) == 6 and all(g["size"] == 5 for g in groups)
    # A second run with the same config and input is a skip.
    assert run_dedup(crawl, stage, cfg, load_copy_embedder(cfg))["committed_at"] == commit["committed_at"]
    # The report: counts table and a decodable PNG.
    md, png = dedup_report(crawl, stage)
    assert "removed: corrupt" in md and "| pool | %d |" % (len(pool) + 1) in md.replace(",", "")
    sheet = Image.open(io.BytesIO(png))
    assert sheet.format == "PNG" and sheet.height > 64 and len(png) < 400_000


def test_eval_set_contamination_drops_whole_components(tmp_path, pool):
    sources = sorted({it.source for it in pool if it.edit != "original"})
    victim = sources[0]
    victim_original = next(it for it in pool if it.source == victim and it.edit == "original")
    outside = next(it for it in pool if it.edit == "original" and it.source not in sources)
    pool_without = [it for it in pool if it.source != outside.source]
    eval_dir = tmp_path / "evalset" / "val"
    eval_dir.mkdir(parents=True)
    copy = Image.open(io.BytesIO(victim_original.data))
    (eval_dir / "victim.jpg").write_bytes(_jpeg(copy.resize((copy.width // 2, copy.height // 2)), 60))
    (eval_dir / "outside.jpg").write_bytes(outside.data)
    (eval_dir / "broken.jpg").write_bytes(b"nope")
    crawl = _crawl(tmp_path, pool_without)
    stage = str(tmp_path / "dedup")
    cfg = DedupConfig(hash_radius=8, eval_sets=[str(tmp_path / "evalset")])
    commit = run_dedup(crawl, stage, cfg, load_copy_embedder(cfg))
    keep = {r["key"]: r for r in read_table(join(stage, "keep.parquet")).to_pylist()}
    victims = [it.key for it in pool_without if it.source == victim]
    assert len(victims) == 5
    for key in victims:
        assert keep[key]["reason"] == "eval-set" and not keep[key]["kept"]
        assert keep[key]["eval_image"].endswith("#val/victim.jpg")
    others = [it for it in pool_without if it.source != victim]
    assert all(keep[it.key]["reason"] != "eval-set" for it in others)
    assert commit["counts"]["removed_eval-set"] == 5
    assert commit["extra"]["eval_images"] == 2 and commit["extra"]["eval_images_undecodable"] == 1
    groups = read_table(join(stage, "groups.parquet")).to_pylist()
    g = next(g for g in groups if g["reason"] == "eval-set")
    assert g["representative"] is None and sorted(g["members"]) == sorted(victims)


def test_parts_resume_and_bad_model_fails_before_work(tmp_path, pool):
    crawl = _crawl(tmp_path, pool[:60], shard_size=20)
    stage = str(tmp_path / "dedup")
    cfg = DedupConfig(hash_method="phash", copy_model=None)
    with pytest.raises(CopyModelError):
        load_copy_embedder(DedupConfig(copy_model=str(tmp_path / "missing.pt")))
    assert not os.path.exists(join(stage, "parts"))
    prep = dedup_prepare(crawl, stage, cfg, None)
    assert len(prep["shards"]) == 3 and not prep["skip"]
    first = [dedup_shard_part(s, stage, cfg, None) for s in prep["shards"][:2]]
    meta0 = part_uri(stage, "pool-000000", "meta.parquet")
    mtime = os.path.getmtime(meta0)
    with pytest.raises(Exception, match="not finished"):
        dedup_finalize(crawl, stage, cfg, None)
    prep2 = dedup_prepare(crawl, stage, cfg, None)
    assert prep2["done"] == ["pool-000000", "pool-000001"]
    assert dedup_shard_part(prep["shards"][0], stage, cfg, None) == first[0]
    assert os.path.getmtime(meta0) == mtime
    dedup_shard_part(prep["shards"][2], stage, cfg, None)
    commit = dedup_finalize(crawl, stage, cfg, None)
    assert commit["counts"]["pool"] == 60 and commit["extra"]["hash"] == "phash"


def test_report_pieces_are_pure():
    md = reason_counts_markdown({"pool": 1000, "kept": 700, "removed_copy": 300})
    assert "| removed: copy | 300 | 30.0% |" in md
    img = Image.fromarray(np.full((40, 90, 3), 200, np.uint8))
    png = contact_sheet_png([("copy (n=2)", [img, img]), ("eval-set (n=1)", [img])], thumb=32)
    sheet = Image.open(io.BytesIO(png))
    assert sheet.size[1] == 2 * (32 + 6) + 6


def test_the_stage_keeps_the_original_of_planted_copy_groups(tmp_path):
    from tasks.dedup.quality import originals_kept, stage_kept, stage_labels

    items = planted_pool(n_with_copies=8, edits=("reencode", "text", "grey-pad", "pad", "colour", "crop"), seed=5)
    crawl = str(tmp_path / "crawl")
    write_crawl_stage(crawl, items, shard_size=40)
    cfg = DedupConfig(hash_radius=8)
    assert cfg.keep == "original"
    stage = str(tmp_path / "dedup")
    run_dedup(crawl, stage, cfg, load_copy_embedder(cfg))
    kept = originals_kept(items, stage_labels(stage, items), stage_kept(stage, items))
    assert kept["groups"] >= 6, kept
    assert kept["share"] == 1.0, kept
    # The previous rule (largest area) keeps padded copies instead.
    old = str(tmp_path / "dedup-resolution")
    run_dedup(crawl, old, cfg.model_copy(update={"keep": "resolution"}), load_copy_embedder(cfg))
    assert originals_kept(items, stage_labels(old, items), stage_kept(old, items))["share"] < 0.5

"""The safety stage end to end on a committed crawl of real photos: every crawl image decided exactly
once, removals recorded with their scores, faces blurred in the stored images and nothing else changed."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from storage.commit import StageNotCommitted, read_commit
from storage.shards import iter_samples, read_manifest
from storage.tables import read_table
from storage.uri import join, list_files, write_bytes_atomic
from tasks.safety.config import SafetyConfig
from tasks.safety.decisions import DECISIONS_SCHEMA
from tasks.safety.models import SafetyModelError
from tasks.safety.report import blurred_examples, contact_sheet_png, counts_markdown, report_markdown
from tasks.safety.stage import finalize_safety, plan_safety_parts, safety_input_digest, safety_part
from tests.safety.models import BrightnessScore, save_torchscript
from tests.safety.pool import make_crawl_stage

SHARDS = [["astronaut", "coffee", "chelsea", "page"], ["camera", "rocket", "moon", "coins", "clock"], ["page"]]
FAST_FACES = {"detectors": ["builtin:haar-frontal-alt2"], "scale_factor": 1.2}


def _run(crawl_uri, out, cfg):
    parts = plan_safety_parts(crawl_uri, cfg)
    summaries = [safety_part(p, out, cfg) for p in parts]
    commit = finalize_safety(out, parts, cfg, safety_input_digest(crawl_uri, cfg))
    decisions = read_table(join(out, "decisions.parquet"), schema=DECISIONS_SCHEMA).to_pylist()
    return parts, summaries, commit, decisions


def _stored(stage_uri):
    out = {}
    for shard in read_manifest(stage_uri).to_pylist():
        for key, fields in iter_samples(shard["url"], expected_sha256=shard["sha256"]):
            assert key not in out
            out[key] = fields
    return out


@pytest.fixture(scope="module")
def module_s3_root(s3_server):
    """One bucket for the module's tests, which read the same screened stage."""
    import storage.uri

    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_server.env().items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        storage.uri.configure(None)
        storage.uri.clear_fs_cache()
        yield f"s3://{s3_server.new_bucket()}/lvd"
        storage.uri.clear_fs_cache()


@pytest.fixture(scope="module")
def screened(module_s3_root, tmp_path_factory):
    s3_root, tmp_path = module_s3_root, tmp_path_factory.mktemp("safety-models")
    crawl_uri = join(s3_root, "lvd", "v1", "crawl")
    names = make_crawl_stage(crawl_uri, SHARDS, corrupt={1: 1})
    model_uri = join(s3_root, "models", "bright.pt")
    write_bytes_atomic(model_uri, open(save_torchscript(BrightnessScore(32), tmp_path / "bright.pt"), "rb").read())
    cfg = SafetyConfig(
        nsfw={"model": model_uri, "input_size": 32, "mean": (0, 0, 0), "std": (255, 255, 255), "nsfw_index": 0,
              "activation": "sigmoid", "threshold": 0.5},
        faces=FAST_FACES, workers=0, batch_size=3,
    )
    out = join(s3_root, "lvd", "v1", "safety")
    return crawl_uri, names, out, cfg, *_run(crawl_uri, out, cfg)


def test_every_crawl_image_is_decided_once_and_counts_reconcile(screened):
    crawl_uri, names, out, cfg, parts, summaries, commit, decisions = screened
    assert sorted(d["key"] for d in decisions) == sorted(names)
    kept = [d for d in decisions if not d["removed"]]
    removed = [d for d in decisions if d["removed"]]
    assert len(kept) + len(removed) == len(names) == read_commit(crawl_uri)["counts"]["samples"]
    assert {d["key"]: d["reason"] for d in removed} == {
        k: ("undecodable" if n == "corrupt" else "nsfw") for k, n in names.items() if n in ("page", "corrupt")}
    for d in removed:
        assert d["output_shard"] is None and d["n_faces"] is None
        if d["reason"] == "nsfw":
            assert d["nsfw_score"] > cfg.nsfw.threshold
        else:
            assert d["nsfw_score"] is None and d["error"]
    stored = _stored(out)
    assert sorted(stored) == sorted(d["key"] for d in kept)
    assert all(d["nsfw_score"] <= cfg.nsfw.threshold and d["output_shard"] in list_files(out, ".tar") for d in kept)
    manifest = read_manifest(out).to_pylist()
    assert len(manifest) == 2  # the third crawl shard held only removed images: no empty shard published
    assert sum(m["nsamples"] for m in manifest) == len(kept) == commit["counts"]["kept"]
    assert commit["counts"] == {
        "parts": 3, "samples": len(names), "kept": len(kept), "removed": len(removed),
        "removed_nsfw": sum(n == "page" for n in names.values()), "removed_undecodable": 1,
        "blurred": 1, "faces": 1, "shards": 2,
    }


def test_faces_are_blurred_in_the_stored_image_and_the_rest_is_kept(screened):
    crawl_uri, names, out, cfg, parts, summaries, commit, decisions = screened
    stored = _stored(out)
    by_name = {names[d["key"]]: d for d in decisions}
    astro = by_name["astronaut"]
    assert astro["blurred"] and astro["n_faces"] == 1
    meta = json.loads(stored[astro["key"]]["json"])
    (box,) = meta["safety"]["face_boxes"]
    assert meta["safety"]["blurred"] and box == [astro["boxes"][0][c] for c in "xywh"]
    assert meta["url"].endswith(".jpg") and meta["bytes"] == len(stored[astro["key"]]["jpg"])
    crawl = {k: f for s in read_manifest(crawl_uri).to_pylist() for k, f in iter_samples(s["url"])}
    before = np.asarray(Image.open(io.BytesIO(crawl[astro["key"]]["jpg"])).convert("RGB"), np.int16)
    after = np.asarray(Image.open(io.BytesIO(stored[astro["key"]]["jpg"])).convert("RGB"), np.int16)
    x, y, w, h = box
    assert np.abs(after[y:y + h, x:x + w] - before[y:y + h, x:x + w]).mean() > 12
    outside = np.ones(before.shape[:2], bool)
    outside[max(0, y - 8):y + h + 8, max(0, x - 8):x + w + 8] = False  # JPEG blocks at the border may shift
    assert np.abs(after[outside] - before[outside]).mean() < 1.5
    for name in ("coffee", "chelsea", "rocket", "moon"):
        d = by_name[name]
        assert not d["blurred"] and d["n_faces"] == 0 and d["boxes"] == []
        assert stored[d["key"]]["jpg"] == crawl[d["key"]]["jpg"]  # untouched images keep their bytes


def test_parts_are_idempotent_and_report_shows_blurred_examples(screened):
    crawl_uri, names, out, cfg, parts, summaries, commit, decisions = screened
    assert [safety_part(p, out, cfg) for p in parts] == summaries
    md = counts_markdown(commit["counts"], cfg.nsfw.threshold)
    assert f"| removed: NSFW score above threshold | {commit['counts']['removed_nsfw']} |" in md
    examples = blurred_examples(out)
    assert [names[k] for k, _, _ in examples] == ["astronaut"]
    sheet = Image.open(io.BytesIO(contact_sheet_png(examples)))
    assert sheet.format == "PNG" and sheet.width < 200 and sheet.height < 200
    assert Image.open(io.BytesIO(contact_sheet_png([]))).format == "PNG"
    text = report_markdown(commit["counts"], cfg.nsfw.threshold, contact_sheet_png(examples))
    assert md in text and "](data:image/png;base64," in text


def test_builtin_models_keep_every_ordinary_photo(tmp_path):
    crawl_uri = f"file://{tmp_path}/crawl"
    names = make_crawl_stage(crawl_uri, [["coffee", "chelsea", "rocket", "page", "coins", "astronaut"]])
    cfg = SafetyConfig(faces=FAST_FACES, workers=1, batch_size=2)  # through a worker process
    _, _, commit, decisions = _run(crawl_uri, f"file://{tmp_path}/safety", cfg)
    assert commit["counts"]["kept"] == len(names) and commit["counts"]["removed"] == 0
    assert all(0 <= d["nsfw_score"] < 0.5 * cfg.nsfw.threshold for d in decisions)
    assert commit["extra"]["models"]["nsfw"][0] == "builtin:open-nsfw"


def test_bad_model_or_uncommitted_crawl_fails_before_any_work(tmp_path):
    crawl_uri = f"file://{tmp_path}/crawl"
    with pytest.raises(StageNotCommitted):
        plan_safety_parts(crawl_uri, SafetyConfig())
    make_crawl_stage(crawl_uri, [["coffee"]])
    with pytest.raises(SafetyModelError, match="does not exist"):
        plan_safety_parts(crawl_uri, SafetyConfig(nsfw={"model": f"file://{tmp_path}/missing.onnx"}))
    with pytest.raises(SafetyModelError, match="takes 224x224"):
        plan_safety_parts(crawl_uri, SafetyConfig(nsfw={"input_size": 112, "resize": 128}))


def test_a_crawl_shard_that_changed_after_its_commit_fails_its_part_and_publishes_nothing(tmp_path):
    crawl_uri = f"file://{tmp_path}/crawl"
    make_crawl_stage(crawl_uri, [["coffee", "chelsea"]])
    cfg = SafetyConfig(nsfw={"enabled": False}, faces=FAST_FACES, workers=0)
    (part,) = plan_safety_parts(crawl_uri, cfg)
    shard = tmp_path / "crawl" / "pool-000000-000.tar"
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 0xFF  # flip a byte in the last member's padding: still a readable tar, other bytes
    shard.write_bytes(bytes(data))
    out = f"file://{tmp_path}/safety"
    with pytest.raises(ValueError, match="does not match the manifest"):
        safety_part(part, out, cfg)
    assert list_files(out, ".tar") == [] and not (tmp_path / "safety" / "_parts").exists()

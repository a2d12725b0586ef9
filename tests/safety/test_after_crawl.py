"""The safety stage on the output of a real crawl of the demo web: every crawled image decided once."""

import pytest

from storage.shards import read_manifest
from storage.tables import read_table
from storage.uri import join
from lvd.demo_web import build_demo_web, serve_demo_web
from tasks.crawl.records import RECORDS_SCHEMA
from tasks.crawl.stage import crawl_part, finalize_crawl, plan_crawl_parts
from tasks.safety.config import SafetyConfig
from tasks.safety.decisions import DECISIONS_SCHEMA
from tasks.safety.stage import finalize_safety, plan_safety_parts, safety_input_digest, safety_part


@pytest.fixture(scope="module")
def crawled(tmp_path_factory):
    web = build_demo_web(tmp_path_factory.mktemp("safety-web"), n_images=24, seed=11)
    stage = f"file://{tmp_path_factory.mktemp('safety-crawl')}/crawl"
    with serve_demo_web(web.root) as server:
        cfg = server.crawl_config(decode_workers=1, max_samples_per_shard=10, pages_per_part=2)
        parts = plan_crawl_parts([str(p) for p in web.html_files], cfg)
        for part in parts:
            crawl_part(part, stage, cfg)
        finalize_crawl(stage, parts, cfg, input_digest="demo")
    return stage


def test_decisions_reconcile_with_the_crawl_records_and_manifest(crawled, tmp_path):
    cfg = SafetyConfig(nsfw={"enabled": False}, faces={"detectors": ["builtin:haar-frontal-alt2"], "scale_factor": 1.3},
                       workers=0)
    out = f"file://{tmp_path}/safety"
    parts = plan_safety_parts(crawled, cfg)
    for part in parts:
        safety_part(part, out, cfg)
    commit = finalize_safety(out, parts, cfg, safety_input_digest(crawled, cfg))
    records = read_table(join(crawled, "records.parquet"), schema=RECORDS_SCHEMA).to_pylist()
    crawled_keys = sorted(r["key"] for r in records if r["kind"] == "image" and r["status"] == "ok")
    decisions = read_table(join(out, "decisions.parquet"), schema=DECISIONS_SCHEMA).to_pylist()
    assert sorted(d["key"] for d in decisions) == crawled_keys
    assert len(parts) == len(read_manifest(crawled)) > 1
    assert sum(m["nsamples"] for m in read_manifest(crawled).to_pylist()) == len(crawled_keys)
    kept = sum(not d["removed"] for d in decisions)
    assert all(d["nsfw_score"] is None for d in decisions)  # the classifier was switched off, so never ran
    assert commit["counts"]["kept"] + commit["counts"]["removed"] == len(crawled_keys)
    assert sum(m["nsamples"] for m in read_manifest(out).to_pylist()) == kept == len(crawled_keys)
    assert {d["shard"] for d in decisions} == {m["url"] for m in read_manifest(crawled).to_pylist()}

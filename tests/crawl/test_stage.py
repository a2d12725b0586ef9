"""The crawl stage end to end on the demo web: every input kind, every bad case, exact reconciliation."""

import gzip
import hashlib
import json
from collections import Counter
from urllib.parse import urlsplit

import pytest

from storage.commit import read_commit
from storage.shards import iter_samples, read_manifest
from storage.tables import read_table
from storage.uri import join, list_files
from tasks.crawl.records import RECORDS_SCHEMA
from tasks.crawl.stage import CrawlPart, crawl_part, finalize_crawl, plan_crawl_parts


def _cfg(server, **over):
    values = dict(read_timeout=0.5, request_timeout=2.0, retries=2, decode_workers=2, max_per_host=4)
    values.update(over)
    return server.crawl_config(**values)


def _run(inputs, stage_uri, cfg):
    parts = plan_crawl_parts(inputs, cfg)
    summaries = [crawl_part(p, stage_uri, cfg) for p in parts]
    commit = finalize_crawl(stage_uri, parts, cfg, input_digest="test-input")
    return parts, summaries, commit, read_table(join(stage_uri, "records.parquet"), schema=RECORDS_SCHEMA).to_pylist()


def _samples(stage_uri):
    out = {}
    for shard in read_manifest(stage_uri).to_pylist():
        for key, fields in iter_samples(shard["url"], expected_sha256=shard["sha256"]):
            assert key not in out
            out[key] = (shard["url"], fields)
    return out


@pytest.fixture(scope="module")
def warc_crawl(crawl_server, crawl_web, tmp_path_factory):
    stage = f"file://{tmp_path_factory.mktemp('warc-crawl')}/crawl"
    return (stage, *_run([str(crawl_web.warc)], stage, _cfg(crawl_server)))


def test_every_bad_case_gets_its_reason(warc_crawl, crawl_web):
    stage, parts, summaries, commit, rows = warc_crawl
    by_url = {r["url"]: r for r in rows if r["kind"] == "image"}
    wrong = {u: (by_url.get(u, {}).get("status"), by_url.get(u, {}).get("reason"))
             for u, exp in crawl_web.expected.items()
             if (by_url.get(u, {}).get("status"), by_url.get(u, {}).get("reason") or "") != tuple(exp)}
    assert not wrong
    too_long = [r for r in rows if r["reason"] == "url_too_long"]
    assert len(too_long) == 1 and len(too_long[0]["url"]) == 2048  # recorded, truncated, not dropped
    assert by_url["http://flaky.example.org/img/flaky.jpg"]["attempts"] == 3  # 503, 503, 200


def test_records_reconcile_with_inputs_and_shards(warc_crawl, crawl_web):
    stage, parts, summaries, commit, rows = warc_crawl
    images = [r for r in rows if r["kind"] == "image"]
    pages = [r for r in rows if r["kind"] == "page"]
    # Every page of the WARC (and nothing else) is a page row; every distinct image URL is exactly one image row.
    assert sorted(r["url"] for r in pages) == sorted(crawl_web.pages)
    urls = [r["url"] for r in images]
    assert len(urls) == len(set(urls))
    seen = set(urls) - {r["url"] for r in images if r["reason"] == "url_too_long"}
    assert seen == set(crawl_web.good_images) | set(crawl_web.expected)
    # Every ok row is exactly one sample, and every sample is an ok row with matching metadata.
    samples = _samples(stage)
    ok = {r["key"]: r for r in images if r["status"] == "ok"}
    assert set(ok) == set(samples)
    for key, (shard_url, fields) in samples.items():
        meta = json.loads(fields["json"])
        row = ok[key]
        assert (meta["url"], meta["sha256"], shard_url) == (row["url"], row["sha256"], row["shard"])
        assert meta["original_bytes"] == row["bytes"] and max(meta["width"], meta["height"]) <= 512
        assert fields["jpg"][:3] == b"\xff\xd8\xff" and meta["bytes"] == len(fields["jpg"])
        final = urlsplit(row["final_url"])
        original = crawl_web.root / "sites" / final.hostname / final.path.lstrip("/")
        assert hashlib.sha256(original.read_bytes()).hexdigest() == row["sha256"]
    # Counts add up across records, part summaries and the commit.
    c = commit["counts"]
    status = Counter(r["status"] for r in images)
    assert (c["ok"], c["rejected"], c["failed"]) == (status["ok"], status["rejected"], status["failed"])
    assert c["images"] == len(images) == sum(s["images"] for s in summaries)
    assert c["samples"] == len(samples) == c["ok"]
    assert read_commit(stage)["counts"] == c
    assert sum(commit["extra"]["reasons"].values()) == sum(1 for r in rows if r["reason"])


def test_html_files_give_the_same_image_urls_as_the_warc(crawl_server, crawl_web, warc_crawl, tmp_path):
    stage = f"file://{tmp_path}/crawl"
    cfg = _cfg(crawl_server, pages_per_part=4)
    inputs = [str(p) for p in crawl_web.html_files]
    parts, summaries, commit, rows = _run(inputs, stage, cfg)
    assert len(parts) == -(-len(inputs) // 4) and all(p.kind == "html" for p in parts)
    html_urls = {r["url"] for r in rows if r["kind"] == "image"}
    warc_urls = {r["url"] for r in warc_crawl[-1] if r["kind"] == "image"}
    assert html_urls - {u for u in html_urls if len(u) >= 2048} == warc_urls - {u for u in warc_urls if len(u) >= 2048}
    assert all(r["url"].startswith("file://") for r in rows if r["kind"] == "page")


def test_url_list_input_fetches_pages_in_parts(crawl_server, crawl_web, tmp_path):
    stage = f"file://{tmp_path}/crawl"
    cfg = _cfg(crawl_server, pages_per_part=5)
    parts, summaries, commit, rows = _run([str(crawl_web.pages_txt)], stage, cfg)
    lines = crawl_web.pages_txt.read_text().splitlines()
    assert len(parts) == -(-len(lines) // 5) and parts[1].start == 5
    pages = {r["url"]: r for r in rows if r["kind"] == "page"}
    assert set(pages) == {line for line in lines if not line.startswith("#")}
    missing = pages["http://shop.example.com/p/no-such-page.html"]
    assert (missing["status"], missing["reason"], missing["http_status"]) == ("failed", "http_404", 404)
    ok_images = {r["url"] for r in rows if r["kind"] == "image" and r["status"] == "ok"}
    assert ok_images >= set(crawl_web.good_images) - {"http://flaky.example.org/img/flaky.jpg"}
    per_part = Counter((r["part"], r["url"]) for r in rows if r["kind"] == "image")
    assert max(per_part.values()) == 1  # unique within a part (a logo on every page is fetched once per part)


def test_crawl_part_is_idempotent_and_clears_stale_shards(crawl_server, crawl_web, tmp_path):
    stage = f"file://{tmp_path}/crawl"
    cfg = _cfg(crawl_server)
    part = CrawlPart(index=7, kind="html", uris=[str(crawl_web.html_files[0])])
    stale = tmp_path / "crawl" / "pool-000007-009.tar"  # left behind by an interrupted earlier run
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    first = crawl_part(part, stage, cfg)
    assert not stale.exists() and first["ok"] > 0
    crawl_server.reset_stats()
    again = crawl_part(part.model_dump(), stage, cfg)
    assert again == first and crawl_server.stats()["requests"] == {}
    assert [u.rsplit("/", 1)[-1] for u in list_files(stage, ".tar")] == ["pool-000007-000.tar"]


def test_shards_roll_over(crawl_server, crawl_web, tmp_path):
    stage = f"file://{tmp_path}/crawl"
    cfg = _cfg(crawl_server, max_samples_per_shard=5)
    summary = crawl_part(CrawlPart(index=0, kind="html", uris=[str(crawl_web.html_files[1])]), stage, cfg)
    sizes = [s["nsamples"] for s in summary["shards"]]
    assert sum(sizes) == summary["ok"] and max(sizes) == 5 and len(sizes) == -(-summary["ok"] // 5)


def test_bad_inputs(crawl_server, crawl_web, tmp_path):
    with pytest.raises(ValueError, match="neither"):
        plan_crawl_parts([str(tmp_path)], _cfg(crawl_server))
    with pytest.raises(FileNotFoundError):
        plan_crawl_parts([str(tmp_path / "missing.warc.gz")], _cfg(crawl_server))
    # A WARC with junk after its third record: the pages before the damage are crawled, the damage is recorded.
    data = gzip.decompress(crawl_web.warc.read_bytes())
    third = data.index(b"WARC/1.", data.index(b"WARC/1.", data.index(b"WARC/1.", 1) + 1) + 1)
    cut = tmp_path / "damaged.warc"
    cut.write_bytes(data[:third] + b"\x00garbage\r\n\r\n" + data[third:])
    stage = f"file://{tmp_path}/crawl"
    summary = crawl_part(plan_crawl_parts([str(cut)], _cfg(crawl_server))[0], stage, _cfg(crawl_server))
    rows = read_table(summary["records"]).to_pylist()
    assert summary["ok"] > 0
    assert [r["reason"] for r in rows if r["kind"] == "page" and r["status"] != "ok"] == ["warc_error"]


def test_crawl_writes_to_s3(crawl_server, crawl_web, s3_root):
    stage = join(s3_root, "crawl")
    cfg = _cfg(crawl_server)
    parts, summaries, commit, rows = _run([str(crawl_web.html_files[0])], stage, cfg)
    samples = _samples(stage)
    assert commit["counts"]["samples"] == len(samples) > 0
    assert {r["key"] for r in rows if r["status"] == "ok" and r["kind"] == "image"} == set(samples)


def test_a_crawl_without_images_refuses_to_commit_but_keeps_its_records(crawl_server, tmp_path):
    page = tmp_path / "only-bad.html"
    page.write_text('<base href="http://ads.example.org/"><img src="a.jpg"><img src="ftp://x.example.com/b.jpg">')
    stage = f"file://{tmp_path}/crawl"
    cfg = _cfg(crawl_server)
    parts = plan_crawl_parts([str(page)], cfg)
    crawl_part(parts[0], stage, cfg)
    with pytest.raises(RuntimeError, match="no images"):
        finalize_crawl(stage, parts, cfg, "x")
    rows = read_table(join(stage, "records.parquet")).to_pylist()
    assert sorted(r["reason"] for r in rows if r["kind"] == "image") == ["domain_blocked", "scheme"]
    assert not (tmp_path / "crawl" / "_COMMITTED.json").exists()


# Columns of records.parquet that measure one crawl's timing rather than what it found.
TIMING_COLUMNS = ("elapsed",)


def _published(stage_uri: str, root: str) -> dict:
    """What a crawl published, byte for byte: each shard's name and sha256, and the records
    (less their timings) with the stage location written as ROOT."""
    shards = [(r["name"], r["nsamples"], r["sha256"]) for r in read_manifest(stage_uri).to_pylist()]
    records = read_table(join(stage_uri, "records.parquet"), schema=RECORDS_SCHEMA)
    rows = [json.dumps(r, sort_keys=True).replace(root, "ROOT")
            for r in records.drop_columns(list(TIMING_COLUMNS)).to_pylist()]
    return {"shards": shards, "records": rows}


def test_crawl_output_does_not_depend_on_download_order(crawl_web, tmp_path):
    """One connection at a time (downloads finish in plan order) and many at once (in whatever
    order the network allows) store the same shard bytes and the same records, in key order."""
    from lvd.demo_web import serve_demo_web

    published = []
    for name, concurrency in (("serial", 1), ("parallel", 32)):
        root = f"file://{tmp_path}/{name}"
        with serve_demo_web(crawl_web.root) as server:  # a fresh server: its once-failing hosts fail again
            cfg = _cfg(server, max_concurrency=concurrency, max_per_host=concurrency, pages_per_part=3)
            _run([str(crawl_web.warc)], f"{root}/crawl", cfg)
        published.append(_published(f"{root}/crawl", root))
        keys = [k for shard in read_manifest(f"{root}/crawl").to_pylist() for k, _ in iter_samples(shard["url"])]
        assert keys == sorted(keys) and len(keys) > 50
    assert published[0] == published[1]

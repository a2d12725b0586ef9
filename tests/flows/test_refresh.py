"""Refreshing a dataset: v1 from the first pages, v2 and v3 from new pages only, deduplicated against
the earlier versions through their persisted indexes; shards of earlier versions are reused by URL."""
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from flows.config import PipelineConfig
from lvd.config import validate
from storage.commit import read_commit, read_latest, stage_uri
from storage.shards import iter_samples, read_manifest
from storage.tables import read_table
from storage.uri import join
from tasks.crawl.demo_web import CDN, SHOP, DemoWeb, serve_demo_web

pytestmark = pytest.mark.usefixtures("prefect_backend")
DATASET = "lvd-demo"


def _copies_page(web: DemoWeb) -> str:
    """A new page holding one picture of page 0 again (same URL, same bytes) and a shrunk, re-encoded
    copy of another (a new URL): both are in v1 already."""
    first_page = [u for u in web.good_images if f"//{CDN}/img/000" in u and "-half" not in u][:12]
    same, other = first_page[0], first_page[3]
    src = web.root / "sites" / CDN / other.split(f"//{CDN}/", 1)[1]
    img = Image.open(src).convert("RGB")
    buf = io.BytesIO()
    img.resize((int(img.width * 0.9), int(img.height * 0.9)), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=80)
    (web.root / "sites" / CDN / "img" / "copy-of-v1.jpg").write_bytes(buf.getvalue())
    html = (f'<html><body><img src="{same}"><img src="http://{CDN}/img/copy-of-v1.jpg"></body></html>')
    (web.root / "sites" / SHOP / "p" / "copies.html").write_text(html)
    return f"http://{SHOP}/p/copies.html"


def _inputs(tmp: Path, web: DemoWeb) -> list[str]:
    """The demo pages split into four URL lists; the second adds the page of v1 copies."""
    pages, hostile = web.pages[:-1], web.pages[-1]
    groups = [pages[0:2], [pages[2], _copies_page(web)], [pages[3], hostile], [pages[4]]]
    out = []
    for i, urls in enumerate(groups):
        path = tmp / f"pages-{i}.txt"
        path.write_text("\n".join(urls) + "\n")
        out.append(str(path))
    return out


def _config(server, web, root, version, inputs, **refresh) -> PipelineConfig:
    from lvd.demo import demo_config

    cfg = demo_config("cpu-tiny", [f"storage.root={root}", "dedup.hash_method=phash", "safety.nsfw.enabled=false",
                                   "safety.faces.enabled=false"], server, web)
    return validate(PipelineConfig, {**cfg.model_dump(mode="json"), "version": version, "inputs": inputs,
                                     "refresh": refresh}).curate()


@pytest.fixture(scope="module")
def history(demo_web_dir, tmp_path_factory):
    """v1 from the first list, then v2 and v3 refreshed from `latest`, each run given every list so far."""
    from flows.curate_lvd import curate_lvd

    tmp = tmp_path_factory.mktemp("refresh")
    shutil.copytree(demo_web_dir, tmp / "web")
    web = DemoWeb.load(tmp / "web")
    inputs = _inputs(tmp, web)
    root = f"file://{tmp}/data"
    results = {}
    with serve_demo_web(web.root) as server:
        results["v1"] = curate_lvd(_config(server, web, root, "v1", inputs[:1]))
        for n, version in ((2, "v2"), (3, "v3")):
            results[version] = curate_lvd(_config(server, web, root, version, inputs[:n], from_version="latest"))
        yield {"root": root, "web": web, "server": server, "inputs": inputs, "results": results, "tmp": tmp}


def _samples(root: str, version: str) -> list[tuple[str, dict]]:
    shards = stage_uri(root, DATASET, version, "shards")
    return [(key, fields) for row in read_manifest(shards).to_pylist() for key, fields in iter_samples(row["url"])]


def test_refresh_adds_new_images_and_keeps_earlier_ones(history):
    root = history["root"]
    assert read_latest(root, DATASET) == "v3"
    keys = {v: {k for k, _ in _samples(root, v)} for v in ("v1", "v2", "v3")}
    assert keys["v1"] < keys["v2"] < keys["v3"], "every refresh adds samples and loses none"
    import hashlib

    digests = [hashlib.sha256(f["jpg"]).hexdigest() for _, f in _samples(root, "v3")]
    assert len(digests) == len(set(digests)), "no image twice in v3"
    manifests = {v: read_manifest(stage_uri(root, DATASET, v, "shards")).to_pylist() for v in ("v1", "v2", "v3")}
    v3_urls = [r["url"] for r in manifests["v3"]]
    for row in manifests["v1"]:
        assert row["url"] in v3_urls and "/v1/shards/" in row["url"]
    assert any("/v3/shards/" in u for u in v3_urls)
    for version in ("v2", "v3"):
        dedup = read_commit(stage_uri(root, DATASET, version, "dedup"))
        assert dedup["counts"]["removed_duplicate_of_previous_version"] > 0, dedup["counts"]
        keep = read_table(join(stage_uri(root, DATASET, version, "dedup"), "keep.parquet")).to_pylist()
        earlier = [r for r in keep if r["reason"] == "duplicate_of_previous_version"]
        assert all(r["representative"] and not r["representative"].startswith(r["key"][:6]) for r in earlier)
    # only the new inputs were crawled
    inputs = read_commit(stage_uri(root, DATASET, "v3", "inputs"))
    assert inputs["counts"] == {"new_inputs": 1, "inputs_total": 3}
    assert inputs["extra"]["parent"] == "v2" and inputs["extra"]["ancestors"] == ["v1", "v2"]

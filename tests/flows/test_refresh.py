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
from lvd.demo_web import CDN, SHOP, DemoWeb, serve_demo_web

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


def _table_rows(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("version "))
    header = lines[start].split()
    return {cells[0]: dict(zip(header, cells)) for cells in (line.split() for line in lines[start + 1:]) if cells
            and cells[0].startswith("v")}


def test_info_prints_the_history_and_diff_what_changed(history, capsys):
    from lvd.cli import main

    root = history["root"]
    dataset_uri = join(root, DATASET)
    assert main(["info", dataset_uri]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert set(rows) == {"v1", "v2", "v3*"}, "v3 is marked as latest"
    for version in ("v1", "v2", "v3"):
        row = rows.get(version) or rows[version + "*"]
        shards = read_commit(stage_uri(root, DATASET, version, "shards"))["counts"]
        dedup = read_commit(stage_uri(root, DATASET, version, "dedup"))["counts"]
        assert row["parent"] == {"v1": "-", "v2": "v1", "v3": "v2"}[version]
        assert int(row["added"]) == shards["added_samples"] > 0
        assert int(row["curated"]) == shards["samples"]
        assert int(row["dup_earlier"]) == dedup.get("removed_duplicate_of_previous_version", 0)
        assert int(row["crawled"]) == read_commit(stage_uri(root, DATASET, version, "crawl"))["counts"]["samples"]
    assert int(rows["v2"]["dup_earlier"]) > 0 and int(rows["v1"]["dup_batch"]) > 0

    v1 = read_commit(stage_uri(root, DATASET, "v1", "shards"))["counts"]
    v3 = read_commit(stage_uri(root, DATASET, "v3", "shards"))["counts"]
    assert main(["diff", dataset_uri, "v1", "v3"]) == 0
    out = capsys.readouterr().out
    assert f"shards    reused {v1['shards']}  added {v3['shards'] - v1['shards']}  removed 0" in out
    assert f"samples   {v1['samples']} -> {v3['samples']}  added {v3['samples'] - v1['samples']}  removed 0" in out
    assert main(["diff", join(dataset_uri, "v3"), join(dataset_uri, "v2")]) == 0
    assert "removed 1" in capsys.readouterr().out.splitlines()[1]
    assert main(["diff", dataset_uri]) == 2


def test_readers_follow_mixed_version_shard_urls(history):
    import lvd
    from tasks.train.data import open_source

    root = history["root"]
    ds = lvd.open_dataset(join(root, DATASET))
    assert ds.version == "v3" and len({u.split("/shards/")[0][-2:] for u in ds.shard_urls}) == 3
    keys = [k for k, _ in ds.samples(verify=True)]
    assert len(keys) == len(ds) == len(set(keys))
    assert [s["__key__"] for s in ds.webdataset()] == keys
    source = open_source(join(root, DATASET, "latest", "shards"))
    assert sum(source.shard_sizes()) == len(ds)
    assert [k for i in range(len(source.shard_sizes())) for k, _ in source.read_shard(i)] == keys
    assert lvd.open_dataset(join(root, DATASET, "v1")).shard_urls == ds.shard_urls[:1]


def test_refresh_is_refused_before_any_work(history):
    from flows.curate_lvd import curate_lvd
    from flows.refresh import plan_version
    from storage.versions import NoNewInputs, RefreshRefused, VersionIncomplete

    root, web, server, inputs = history["root"], history["web"], history["server"], history["inputs"]

    def cfg(version="v9", **over):
        c = _config(server, web, root, version, inputs, from_version="latest")
        return validate(PipelineConfig, {**c.model_dump(mode="json"), **over}).curate()

    other = cfg().model_copy(update={"embed": cfg().embed.model_copy(update={"backbone": "pixels:16"})})
    with pytest.raises(RefreshRefused, match=r"'v3' was embedded with .*pixels:32.*this run with .*pixels:16"):
        curate_lvd(other)
    assert not Path(root.removeprefix("file://"), DATASET, "v9").exists(), "refused before anything was written"
    queries = [dict(q, n_neighbours=8) for q in cfg().model_dump(mode="json")["retrieve"]["queries"]]
    with pytest.raises(RefreshRefused, match="same query sets"):
        plan_version(cfg(retrieve={**cfg().model_dump(mode="json")["retrieve"], "queries": queries}))
    broken = Path(root.removeprefix("file://"), DATASET)
    shutil.copytree(broken / "v1", broken / "v1-copy")
    (broken / "v1-copy" / "retrieve" / "_COMMITTED.json").unlink()
    with pytest.raises(VersionIncomplete, match=r"'v1-copy' .* stage 'retrieve'"):
        plan_version(cfg(refresh={"from_version": "v1-copy"}))
    shutil.rmtree(broken / "v1-copy")
    with pytest.raises(RefreshRefused, match="no published version.*if_missing=full"):
        plan_version(cfg(dataset="fresh"))
    assert plan_version(cfg(dataset="fresh", refresh={"from_version": "latest", "if_missing": "full"})).parent is None
    with pytest.raises(NoNewInputs, match="already consumed by v1, v2, v3"):
        plan_version(cfg(inputs=inputs[:3]))


def test_killed_refresh_leaves_latest_and_resumes(history, tmp_path):
    """v4 runs as `lvd curate` in its own process and is killed once its crawl committed: `latest` stays
    on v3; the rerun keeps the committed crawl and publishes v4."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from prefect.settings import PREFECT_API_URL

    from flows.curate_lvd import curate_lvd

    root, web, server = history["root"], history["web"], history["server"]
    cfg = _config(server, web, root, "v4", history["inputs"], from_version="latest")
    preset = tmp_path / "refresh.yaml"
    preset.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    crawled = Path(root.removeprefix("file://"), DATASET, "v4", "crawl", "_COMMITTED.json")
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    proc = subprocess.Popen([sys.executable, "-m", "lvd.cli", "curate", "--config", str(preset)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not crawled.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert crawled.exists(), "the refresh never committed its crawl"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert read_latest(root, DATASET) == "v3"
    shards = stage_uri(root, DATASET, "v4", "shards")
    assert not Path(shards.removeprefix("file://"), "_COMMITTED.json").exists()

    crawl_commit = read_commit(stage_uri(root, DATASET, "v4", "crawl"))
    result = curate_lvd(cfg)
    assert read_latest(root, DATASET) == "v4" and result["version"] == "v4"
    assert read_commit(stage_uri(root, DATASET, "v4", "crawl"))["committed_at"] == crawl_commit["committed_at"]
    fields = ("url", "nsamples", "nbytes", "sha256")
    v3 = [{k: r[k] for k in fields} for r in read_manifest(stage_uri(root, DATASET, "v3", "shards")).to_pylist()]
    v4 = [{k: r[k] for k in fields} for r in read_manifest(shards).to_pylist()]
    assert v4[:len(v3)] == v3 and len(v4) > len(v3), "v3's shards carried over unchanged, v4's added"

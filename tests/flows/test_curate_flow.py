"""curate-lvd as a flow: stages commit, reruns skip, interrupted stages resume from their parts."""
import pyarrow.parquet as pq
import pytest

from flows.config import PipelineConfig
from lvd.config import validate
from storage.commit import read_commit, stage_uri
from storage.shards import iter_samples, read_manifest
from storage.uri import join, open_fs, remove
from tasks.crawl.demo_web import DemoWeb, serve_demo_web

pytestmark = pytest.mark.usefixtures("prefect_backend")


def _config(server, web, root, **over) -> PipelineConfig:
    from lvd.demo import demo_config

    # ~60 pictures are too few to train a PCA hash: pHash for this small web.
    cfg = demo_config("cpu-tiny", [f"storage.root={root}", "dedup.hash_method=phash"], server, web)
    return validate(PipelineConfig, {**cfg.model_dump(mode="json"), **over})


def test_curate_commits_crawl_and_rerun_skips(demo_web_dir, tmp_path):
    from flows.curate_lvd import curate_lvd

    web = DemoWeb.load(demo_web_dir)
    root = f"file://{tmp_path}/data"
    with serve_demo_web(demo_web_dir) as server:
        cfg = _config(server, web, root).curate()
        first = curate_lvd(cfg)
        crawl_uri = stage_uri(root, cfg.dataset, cfg.version, "crawl")
        commit = read_commit(crawl_uri)
        samples = sum(1 for row in read_manifest(crawl_uri).to_pylist() for _ in iter_samples(row["url"]))
        assert commit["counts"]["samples"] == samples > 0
        requests_before = server.stats()
        second = curate_lvd(cfg)
        assert server.stats() == requests_before, "a committed stage must not be crawled again"
    assert second["stages"]["crawl"]["counts"] == first["stages"]["crawl"]["counts"]
    assert read_commit(crawl_uri)["committed_at"] == commit["committed_at"]


def test_interrupted_crawl_reuses_finished_parts(demo_web_dir, tmp_path):
    """A run that died in the crawl: no commit, one part unfinished, nothing downstream.
    The rerun redoes that part only and reaches the same result."""
    from flows.curate_lvd import curate_lvd

    web = DemoWeb.load(demo_web_dir)
    root = f"file://{tmp_path}/data"
    with serve_demo_web(demo_web_dir) as server:
        cfg = _config(server, web, root, inputs=[str(web.pages_txt)]).curate()
        cfg = cfg.model_copy(update={"crawl": cfg.crawl.model_copy(update={"pages_per_part": 2})})
        curate_lvd(cfg)
        crawl_uri = stage_uri(root, cfg.dataset, cfg.version, "crawl")
        full = read_commit(crawl_uri)
        records = pq.read_table(open_fs(join(crawl_uri, "records.parquet"))[1]).num_rows
        assert full["counts"]["parts"] >= 3
        remove(join(crawl_uri, "_COMMITTED.json"))
        remove(join(crawl_uri, "_parts", "000001.json"))
        for later in ("safety", "dedup", "embed", "retrieve", "shards"):
            remove(stage_uri(root, cfg.dataset, cfg.version, later), recursive=True)
        server.reset_stats()
        curate_lvd(cfg)
        redone = server.stats()
    again = read_commit(crawl_uri)
    assert again["counts"] == full["counts"]
    assert pq.read_table(open_fs(join(crawl_uri, "records.parquet"))[1]).num_rows == records
    pages_fetched = sum(v for path, v in redone["paths"].items() if "/p/" in path)
    assert 1 <= pages_fetched <= 2, redone["paths"]

"""curate-lvd as a flow: stages commit, reruns skip, interrupted stages resume from their parts."""
import pyarrow.parquet as pq
import pytest

from flows.config import PipelineConfig
from lvd.config import validate
from storage.commit import read_commit, stage_uri
from storage.shards import iter_samples, read_manifest
from storage.uri import join, open_fs, remove
from lvd.demo_web import DemoWeb, serve_demo_web

pytestmark = pytest.mark.usefixtures("prefect_backend")


def _config(server, web, root, **over) -> PipelineConfig:
    from lvd.demo import demo_config

    # ~60 pictures are too few to train a PCA hash: pHash for this small web.
    cfg = demo_config("cpu-tiny", [f"storage.root={root}", "dedup.hash_method=phash"], server, web)
    return validate(PipelineConfig, {**cfg.model_dump(mode="json"), **over})


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


CHANGES = {  # one setting per stage that enters that stage's config digest and no earlier one's
    "crawl": ("crawl", {"max_redirects": 4}),
    "safety": ("safety", {"batch_size": 7}),
    "dedup": ("dedup", {"copy_threshold": 0.97}),
    "embed": ("embed", {"batch_size": 9}),
    "retrieve": ("retrieve", {"min_similarity": -0.5}),
    "shards": ("shard", {"seed": 3}),
}


def _files(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_every_stage_keeps_its_config_and_refuses_another_without_touching_a_file(demo_web_dir, tmp_path):
    """The stage contract, walked through every curation stage: each committed stage holds its
    settings as config.json; a rerun with the same settings skips every stage; a rerun with one stage's setting changed is refused at that stage
    and leaves every committed file byte-identical; a rerun after the commits of the global steps
    were lost recommits them to the same bytes."""
    from flows.curate_lvd import curate_lvd
    from storage.commit import StageConflict

    web = DemoWeb.load(demo_web_dir)
    root = f"file://{tmp_path}/data"
    with serve_demo_web(demo_web_dir) as server:
        cfg = _config(server, web, root).curate()
        result = curate_lvd(cfg)
        version_dir = tmp_path / "data" / cfg.dataset / cfg.version
        assert set(CHANGES) | {"inputs"} <= set(result["stages"])
        for stage in result["stages"]:
            assert (version_dir / stage / "config.json").is_file(), stage
        crawl_uri = stage_uri(root, cfg.dataset, cfg.version, "crawl")
        samples = sum(1 for row in read_manifest(crawl_uri).to_pylist() for _ in iter_samples(row["url"]))
        assert result["stages"]["crawl"]["counts"]["samples"] == samples > 0
        requests_before, committed_at = server.stats(), read_commit(crawl_uri)["committed_at"]
        assert curate_lvd(cfg)["stages"] == result["stages"]
        assert server.stats() == requests_before, "a committed stage must not be crawled again"
        assert read_commit(crawl_uri)["committed_at"] == committed_at
        assert json_of(version_dir / "dedup" / "config.json")["copy_threshold"] == cfg.dedup.copy_threshold
        before = _files(version_dir)
        for stage, (section, change) in CHANGES.items():
            changed = cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=change)})
            with pytest.raises(StageConflict, match=f"/{stage}"):
                curate_lvd(changed)
            assert _files(version_dir) == before, f"a refused {stage} run changed committed files"
        for stage in ("dedup", "embed", "retrieve", "shards"):
            remove(join(stage_uri(root, cfg.dataset, cfg.version, stage), "_COMMITTED.json"))
        curate_lvd(cfg)
    after = _files(version_dir)
    def outputs(files: dict) -> dict:  # markers carry the time they were written
        return {k: v for k, v in files.items() if not k.endswith(("_COMMITTED.json", "_STARTED.json"))
                and "/_parts/" not in k}

    assert outputs(after) == outputs(before)
    assert set(after) == set(before)


def json_of(path):
    import json

    return json.loads(path.read_text())

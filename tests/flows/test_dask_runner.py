"""curate-lvd on a local two-process Dask cluster publishes, byte for byte, what the thread runner publishes."""
import socket

import pytest

from flows.runner import RunnerConfig, RunnerUnreachable
from storage.commit import stage_uri
from storage.uri import exists
from lvd.demo_web import DemoWeb, serve_demo_web
from tests.support.curation_runs import curate_config, curate_demo
from tests.support.published import differing


@pytest.fixture(scope="module")
def thread_curation(demo_web_dir, tmp_path_factory, prefect_api):
    return curate_demo(demo_web_dir, f"file://{tmp_path_factory.mktemp('threads')}", RunnerConfig())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dask_cluster_publishes_the_same_bytes_as_threads(demo_web_dir, tmp_path, thread_curation):
    """Every shard of every stage, every array and every table's rows (less the crawl's request
    timings) are identical, so nothing depends on which process ran a part or when it finished."""
    threads = thread_curation
    dask = curate_demo(demo_web_dir, f"file://{tmp_path}/dask", RunnerConfig(kind="dask", n_workers=2))
    assert threads["counts"]["crawl"]["parts"] >= 3 and threads["counts"]["shards"]["samples"] > 0
    shards = [p for p in threads["checksums"] if p.endswith(".tar")]
    assert {p.split("/", 1)[0] for p in shards} == {"crawl", "safety", "shards"}
    assert any(p.endswith("embeddings-000000.npy") for p in threads["checksums"])
    assert not differing(threads["checksums"], dask["checksums"])
    assert dask["counts"] == threads["counts"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_thread_runs_publish_the_same_bytes(demo_web_dir, tmp_path, thread_curation):
    again = curate_demo(demo_web_dir, f"file://{tmp_path}/again", RunnerConfig())
    assert not differing(thread_curation["checksums"], again["checksums"])


def test_unreachable_dask_address_fails_before_any_stage(demo_web_dir, tmp_path, prefect_api):
    from flows.curate_lvd import curate_lvd

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    web = DemoWeb.load(demo_web_dir)
    root = f"file://{tmp_path}/data"
    with serve_demo_web(demo_web_dir) as server:
        cfg = curate_config(server, web, root, RunnerConfig(kind="dask", address=address, connect_timeout=2))
        with pytest.raises(RunnerUnreachable, match=f"dask cluster at '{address}'"):
            curate_lvd(cfg)
        assert sum(server.stats()["paths"].values()) == 0
    assert not exists(stage_uri(root, cfg.dataset, cfg.version, "crawl"))

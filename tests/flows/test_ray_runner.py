"""curate-lvd on a local Ray cluster publishes, byte for byte, what the thread runner publishes.

Ray listens on every interface whatever it is told, so its run happens inside a network
namespace that holds only loopback (`unshare -n`, root), with its own Prefect server and demo
web; the thread run shares that namespace and server.
"""
import socket

import pytest

from flows.runner import RunnerConfig, RunnerUnreachable
from storage.commit import stage_uri
from storage.uri import exists
from lvd.demo_web import DemoWeb, serve_demo_web
from tests.support.curation_runs import curate_config, curate_in_loopback_namespace, unshare_refusal
from tests.support.published import differing


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_cluster_publishes_the_same_bytes_as_threads(demo_web_dir, tmp_path):
    refusal = unshare_refusal()
    if refusal is not None:
        pytest.skip(f"a local Ray cluster runs only in a network namespace with loopback alone; {refusal}")
    runs = curate_in_loopback_namespace(
        demo_web_dir, {"thread": f"file://{tmp_path}/threads", "ray": f"file://{tmp_path}/ray"}, tmp_path)
    threads, ray = runs["thread"], runs["ray"]
    assert threads["counts"]["crawl"]["parts"] >= 3 and threads["counts"]["shards"]["samples"] > 0
    assert {p.split("/", 1)[0] for p in threads["checksums"] if p.endswith(".tar")} == {"crawl", "safety", "shards"}
    assert not differing(threads["checksums"], ray["checksums"])
    assert ray["counts"] == threads["counts"]


def test_unreachable_ray_address_fails_before_any_stage(demo_web_dir, tmp_path, prefect_backend):
    from flows.curate_lvd import curate_lvd

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"ray://127.0.0.1:{port}"
    web = DemoWeb.load(demo_web_dir)
    root = f"file://{tmp_path}/data"
    with serve_demo_web(demo_web_dir) as server:
        cfg = curate_config(server, web, root, RunnerConfig(kind="ray", address=address, connect_timeout=2))
        with pytest.raises(RunnerUnreachable, match=f"ray cluster at '{address}'"):
            curate_lvd(cfg)
        assert sum(server.stats()["paths"].values()) == 0
    assert not exists(stage_uri(root, cfg.dataset, cfg.version, "crawl"))


def test_a_ray_address_without_host_is_refused_by_the_config():
    with pytest.raises(ValueError, match="runner.address 'auto' names no host"):
        RunnerConfig(kind="ray", address="auto")
    assert RunnerConfig(kind="ray", address="ray://head").address == "ray://head"

"""curate-lvd on a local two-process Dask cluster curates exactly what the thread runner curates."""
import hashlib
import os
import socket
import time

import numpy as np
import pytest

from flows.config import PipelineConfig
from flows.runner import RunnerConfig, RunnerUnreachable
from lvd.config import validate
from storage.commit import read_commit, stage_uri
from storage.shards import read_manifest
from storage.uri import exists
from tasks.crawl.demo_web import DemoWeb, serve_demo_web

STAGES = ("crawl", "safety", "dedup", "embed", "retrieve", "shards")


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real server that the flow and every Dask worker report to (workers inherit the env)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.support.prefect_stack import prefect_server

    home = tmp_path_factory.mktemp("prefect-home")
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    with prefect_server(home, home / "server.log") as (api_url, _env):
        os.environ.update(PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false")
        try:
            with temporary_settings({PREFECT_API_URL: api_url}):
                yield api_url
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _config(server, web, root, runner: RunnerConfig):
    from lvd.demo import demo_config

    cfg = demo_config("cpu-tiny", [f"storage.root={root}"], server, web)
    data = cfg.model_dump(mode="json")
    data.update(inputs=[str(web.pages_txt)], runner=runner.model_dump())
    data["crawl"]["pages_per_part"] = 2
    return validate(PipelineConfig, data).curate()


def _tar_members(uri: str) -> list[tuple[str, str]]:
    import io
    import tarfile

    from storage.uri import read_bytes

    with tarfile.open(fileobj=io.BytesIO(read_bytes(uri))) as tar:
        return sorted((m.name, hashlib.sha256(tar.extractfile(m).read()).hexdigest()) for m in tar if m.isfile())


def _rows(uri: str, columns: list[str] | None, root: str) -> list[str]:
    """A table's rows, order-free, with the dataset root written as ROOT."""
    import json

    import pyarrow.parquet as pq

    from storage.uri import open_fs

    fs, path = open_fs(uri)
    with fs.open(path, "rb") as f:
        rows = pq.read_table(f, columns=columns).to_pylist()
    return sorted(json.dumps(r, sort_keys=True, default=str).replace(root, "ROOT") for r in rows)


def _embeddings(uri: str) -> dict:
    import io

    import numpy as np
    import pyarrow.parquet as pq

    from storage.uri import join, list_files, open_fs, read_bytes

    vectors = {}
    for ids_uri in list_files(uri, ".parquet"):
        fs, path = open_fs(ids_uri)
        with fs.open(path, "rb") as f:
            keys = pq.read_table(f, columns=["key"]).column("key").to_pylist()
        name = ids_uri.rsplit("/", 1)[-1].replace("ids-", "embeddings-").replace(".parquet", ".npy")
        vectors.update(zip(keys, np.load(io.BytesIO(read_bytes(join(uri, name))))))
    return vectors


# Per stage, the tables (and their columns) whose content must not depend on where parts ran;
# timings and the dataset root are left out. Retrieval and the curated shards are compared by
# counts: their content follows the order in which a crawl part stores its pictures (as downloads
# complete), which differs between any two crawls of the same web, whatever the runner.
TABLES = {
    "crawl": {"records.parquet": ["url", "kind", "page", "status", "reason", "key", "sha256", "shard", "part"]},
    "safety": {"decisions.parquet": None},
    "dedup": {"keep.parquet": ["key", "kept", "shard", "eval_image"]},
    "embed": {},
    "retrieve": {},
    "shards": {},
}


def stage_fingerprint(uri: str, root: str) -> dict:
    """What a stage published: counts, the members (and their sha256) of every shard in its
    manifest and the rows of its tables, independent of the order in which parts finished."""
    from storage.uri import join

    stage = uri.rstrip("/").rsplit("/", 1)[-1]
    files: dict = {}
    if stage in ("crawl", "safety"):
        files = {row["name"]: _tar_members(row["url"]) for row in read_manifest(uri).to_pylist()}
    for name, columns in TABLES[stage].items():
        files[name] = _rows(join(uri, name), columns, root)
    return {"counts": read_commit(uri)["counts"], "files": files}


def curate_on(demo_web_dir, root: str, runner: RunnerConfig) -> tuple[dict, float]:
    from flows.curate_lvd import curate_lvd

    web = DemoWeb.load(demo_web_dir)
    with serve_demo_web(demo_web_dir) as server:  # a fresh server: its once-failing hosts fail again
        cfg = _config(server, web, root, runner)
        started = time.monotonic()
        result = curate_lvd(cfg)
        elapsed = time.monotonic() - started
    prints = {s: stage_fingerprint(stage_uri(root, cfg.dataset, cfg.version, s), root) for s in STAGES}
    prints["_embeddings"] = _embeddings(stage_uri(root, cfg.dataset, cfg.version, "embed"))
    return prints | {"_result": {s: result["stages"][s]["counts"] for s in STAGES}}, elapsed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dask_cluster_curates_what_threads_curate(demo_web_dir, tmp_path, prefect_api):
    threads, _ = curate_on(demo_web_dir, f"file://{tmp_path}/threads", RunnerConfig())
    dask, _ = curate_on(demo_web_dir, f"file://{tmp_path}/dask", RunnerConfig(kind="dask", n_workers=2))
    assert threads["crawl"]["counts"]["parts"] >= 3 and threads["shards"]["counts"]
    differ = {stage: sorted(k for k in set(threads[stage]["files"]) | set(dask[stage]["files"])
                            if threads[stage]["files"].get(k) != dask[stage]["files"].get(k))
              for stage in STAGES if dask[stage] != threads[stage]}
    assert not differ, f"stages whose outputs differ (files): {differ}"
    assert sorted(dask["_embeddings"]) == sorted(threads["_embeddings"])
    for key, vector in threads["_embeddings"].items():
        np.testing.assert_allclose(dask["_embeddings"][key], vector, atol=2e-3)
    assert dask["_result"] == threads["_result"]


def test_unreachable_dask_address_fails_before_any_stage(demo_web_dir, tmp_path, prefect_api):
    from flows.curate_lvd import curate_lvd

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    web = DemoWeb.load(demo_web_dir)
    root = f"file://{tmp_path}/data"
    with serve_demo_web(demo_web_dir) as server:
        cfg = _config(server, web, root, RunnerConfig(kind="dask", address=address, connect_timeout=2))
        with pytest.raises(RunnerUnreachable, match=f"dask cluster at '{address}'"):
            curate_lvd(cfg)
        assert sum(server.stats()["paths"].values()) == 0
    assert not exists(stage_uri(root, cfg.dataset, cfg.version, "crawl"))

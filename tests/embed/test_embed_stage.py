import io
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from storage.commit import read_commit
from storage.shards import ShardWriter
from tasks.datasets import fashion_mnist
from tasks.embed.backbone import load_embedder
from tasks.embed.config import EmbedConfig
from tasks.embed.run import (
    EmbeddingMismatch,
    embed_query_set,
    embed_shard,
    finalize_embed,
    open_pool_embeddings,
    load_query_embeddings,
)
from tasks.queries.config import QuerySetConfig
from tasks.queries.sets import QuerySetError, iter_query_images

CFG = EmbedConfig(backbone="pixels:16", batch_size=16)


def png(a) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def fm():
    return fashion_mnist.load("test").subset(60, seed=0)


@pytest.fixture
def pool(tmp_path, fm):
    url = str(tmp_path / "crawl" / "pool-000007.tar")
    with ShardWriter(url) as w:
        for i, a in enumerate(fm.images[:50]):
            w.write(f"k{i:03d}", {"jpg": png(a), "json": {"url": f"https://e.org/{i}"}})
        w.write("broken", {"jpg": b"not an image", "json": {}})
    return url


def reference(fm, idx):
    emb = load_embedder("pixels:16")
    import torch

    return emb(torch.stack([emb.preprocess(Image.fromarray(fm.images[i])) for i in idx])).numpy()


def test_embed_shard_writes_float16_vectors_for_kept_keys(tmp_path, pool, fm):
    stage = str(tmp_path / "embed")
    keep = [f"k{i:03d}" for i in range(0, 50, 2)] + ["broken"]
    s = embed_shard(pool, keep, stage, CFG)
    assert (s["images"], s["failed"], s["failed_keys"], s["index"]) == (25, 1, ["broken"], 7)
    x = np.load(os.path.join(stage, "embeddings-000007.npy"))
    assert x.dtype == np.float16 and x.shape == (25, 256)
    ids = pq.read_table(os.path.join(stage, "ids-000007.parquet")).to_pylist()
    assert [r["key"] for r in ids] == keep[:-1] and {r["shard"] for r in ids} == {"pool-000007.tar"}
    np.testing.assert_allclose(x.astype(np.float32), reference(fm, range(0, 50, 2)), atol=2e-3)


def test_workers_give_the_same_result_and_finished_parts_are_reused(tmp_path, pool):
    a = embed_shard(pool, None, str(tmp_path / "a"), CFG)
    b = embed_shard(pool, None, str(tmp_path / "b"), CFG.model_copy(update={"num_workers": 2}))
    xa, xb = (open_pool_embeddings(str(tmp_path / n), require_commit=False) for n in "ab")
    rows = np.arange(50)
    assert xa.ids_at(rows) == xb.ids_at(rows) and len(xa) == 50
    np.testing.assert_array_equal(xa.take(rows), xb.take(rows))
    npy = tmp_path / "a" / "embeddings-000007.npy"
    before = npy.stat().st_mtime_ns
    again = embed_shard(pool, None, str(tmp_path / "a"), CFG)
    assert again == a and npy.stat().st_mtime_ns == before
    # A different config does not reuse the part.
    other = embed_shard(pool, None, str(tmp_path / "a"), CFG.model_copy(update={"backbone": "pixels:8"}))
    assert other["dim"] == 64 and b["dim"] == 256


def make_query_sources(tmp_path, fm):
    folder = tmp_path / "folder"
    for i in range(12):
        d = folder / f"class{int(fm.labels[i])}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img{i:02d}.png").write_bytes(png(fm.images[i]))
    tar_path = tmp_path / "wds" / "q-000000.tar"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w") as tar:
        for i in range(12):
            for name, data in ((f"s{i:02d}.png", png(fm.images[i])), (f"s{i:02d}.cls", str(int(fm.labels[i])).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    listing = tmp_path / "list" / "images.parquet"
    (tmp_path / "list" / "img").mkdir(parents=True)
    paths = []
    for i in range(12):
        (tmp_path / "list" / "img" / f"{i}.png").write_bytes(png(fm.images[i]))
        paths.append(f"img/{i}.png")
    pq.write_table(pa.table({"path": paths, "label": [str(int(y)) for y in fm.labels[:12]]}), listing)
    return [QuerySetConfig(name="folder", uri=str(folder)), QuerySetConfig(name="wds", uri=str(tar_path.parent)),
            QuerySetConfig(name="listing", uri=f"file://{listing}")]


def test_query_sets_in_three_formats_embed_to_the_same_vectors(tmp_path, fm):
    stage = str(tmp_path / "embed")
    sets = make_query_sources(tmp_path, fm)
    labels = {}
    for qs in sets:
        s = embed_query_set(qs, stage, CFG.model_copy(update={"num_workers": 2 if qs.name == "wds" else 0}))
        assert s["images"] == 12
        q = load_query_embeddings(stage, qs.name)
        order = np.argsort([int(k.rsplit("/", 1)[-1].split(".")[0].lstrip("imgs")) for k in q.keys])
        labels[qs.name] = [q.labels[i] for i in order]
        np.testing.assert_allclose(q.vectors[order], reference(fm, range(12)), atol=2e-3)
    expected = [str(int(y)) for y in fm.labels[:12]]
    assert labels["wds"] == labels["listing"] == expected
    assert labels["folder"] == [f"class{y}" for y in expected]


def test_missing_or_empty_query_sets_fail_before_work(tmp_path):
    stage = str(tmp_path / "embed")
    with pytest.raises(QuerySetError, match="does not exist"):
        embed_query_set(QuerySetConfig(name="gone", uri=str(tmp_path / "nowhere")), stage, CFG)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(QuerySetError, match="holds no images"):
        embed_query_set(QuerySetConfig(name="empty", uri=str(tmp_path / "empty")), stage, CFG)
    with pytest.raises(QuerySetError, match="never|embed it first"):
        load_query_embeddings(stage, "gone")
    assert list(iter_query_images(QuerySetConfig(name="empty", uri=str(tmp_path / "empty")))) == []


def test_finalize_commits_model_identity_and_refuses_mixed_models(tmp_path, pool, fm):
    stage = str(tmp_path / "embed")
    s = embed_shard(pool, None, stage, CFG)
    q = embed_query_set(make_query_sources(tmp_path, fm)[0], stage, CFG)
    commit = finalize_embed(stage, [s], CFG, "input-digest", [q])
    assert commit["counts"]["images"] == 50 and commit["counts"]["query_images"] == 12
    assert commit["extra"]["model_id"] == "pixels:16" and commit["extra"]["dim"] == 256
    assert read_commit(stage)["extra"]["checksum"] == s["checksum"]
    other = embed_shard(pool, None, str(tmp_path / "other"), CFG.model_copy(update={"backbone": "pixels:8"}))
    with pytest.raises(EmbeddingMismatch):
        finalize_embed(str(tmp_path / "other"), [other, s], CFG, "input-digest")


def test_kept_keys_by_shard_reads_the_dedup_decisions_by_canonical_shard_name(tmp_path, pool, fm):
    from storage.tables import SCHEMAS, write_table
    from tasks.dedup.layout import kept_keys_by_shard

    rows = [{"key": f"k{i:03d}", "shard": pool if i < 3 else "pool-000008.tar", "kept": i != 1,
             "reason": None if i != 1 else "copy", "group_id": None, "representative": None, "score": None}
            for i in range(5)]
    rows = [{k: r.get(k) for k in SCHEMAS["dedup.keep"].names} for r in rows]
    write_table(str(tmp_path / "dedup" / "keep.parquet"), rows, SCHEMAS["dedup.keep"])
    keep = kept_keys_by_shard(str(tmp_path / "dedup"))
    assert keep == {"pool-000007": ["k000", "k002"], "pool-000008": ["k003", "k004"]}
    s = embed_shard(pool, keep["pool-000007"], str(tmp_path / "embed"), CFG)
    assert s["images"] == 2

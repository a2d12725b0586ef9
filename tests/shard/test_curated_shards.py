import hashlib
import json
import os
from collections import Counter

import numpy as np
import pytest
import webdataset as wds

from storage.commit import read_commit
from storage.shards import iter_samples, read_manifest
from storage.tables import read_table
from storage.uri import join, list_files
from tasks.embed.config import EmbedConfig
from tasks.embed.run import embed_query_set, embed_shard, finalize_embed
from tasks.queries.config import QuerySetConfig
from tasks.queries.sets import QuerySetError
from tasks.retrieve.config import KMeansConfig, RetrieveConfig
from tasks.retrieve.layout import read_selection
from tasks.retrieve.run import run_retrieve
from tasks.shard.config import ShardConfig
from tasks.shard.report import composition_markdown
from tasks.shard.write import composition_table, write_curated_shards
from tests.support.curation_pool import build_pool

ECFG = EmbedConfig(backbone="pixels:16", batch_size=128)


@pytest.fixture(scope="module")
def retrieved(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    pool = build_pool(str(root), n_fmnist=300, n_digits=100, n_photos=100, n_queries=60, per_shard=200)
    sets = [QuerySetConfig(name="fmnist", uri=pool.query_dir, rule="sample", n_neighbours=3),
            QuerySetConfig(name="curated", uri=pool.query_dir, rule="as-is")]
    embed = str(root / "embed")
    parts = [embed_shard(u, None, embed, ECFG) for u in pool.shard_urls]
    finalize_embed(embed, parts, ECFG, "crawl", [embed_query_set(q, embed, ECFG) for q in sets])
    retrieve = str(root / "retrieve")
    run_retrieve(embed, retrieve, RetrieveConfig(queries=sets, kmeans=KMeansConfig(n_clusters=10)))
    return pool, sets, retrieve


def pool_bytes(pool):
    out = {}
    for url in pool.shard_urls:
        for key, fields in iter_samples(url):
            out[key] = fields["jpg"]
    return out


def test_shards_hold_the_selection_shuffled_with_provenance(retrieved, tmp_path):
    pool, sets, retrieve = retrieved
    stage = str(tmp_path / "shards")
    commit = write_curated_shards(retrieve, pool.crawl_uri, stage, ShardConfig(samples_per_shard=40, seed=1), sets)
    selection = read_selection(retrieve).to_pylist()
    n = len(selection)
    assert commit["counts"]["samples"] == n and commit["counts"]["shards"] == -(-n // 40)
    urls = list_files(stage, ".tar")
    assert [os.path.basename(u) for u in urls] == [f"lvd-{i:06d}.tar" for i in range(len(urls))]
    # Plain webdataset reads the shards.
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == n and len({s["__key__"] for s in samples}) == n
    originals = pool_bytes(pool)
    picked = set()
    for s in samples:
        meta = json.loads(s["json"])
        assert hashlib.sha256(s["jpg"]).hexdigest() == meta["sha256"]
        assert {"url", "sha256", "cluster", "query_dataset", "similarity", "rule", "query_id"} <= set(meta)
        if meta["source"] == "pool":
            assert s["jpg"] == originals[meta["pool_key"]] and meta["url"].startswith("https://example.org/")
            picked.add(meta["pool_key"])
        else:
            assert meta["rule"] == "as-is" and meta["query_dataset"] == "curated"
    assert picked == {r["key"] for r in selection if r["source"] == "pool"}
    # Shuffled across sources: as-is images are spread over the shards, not appended at the end.
    per_shard = Counter(s["__url__"] for s in samples if json.loads(s["json"])["source"] == "query")
    assert len(per_shard) >= len(urls) - 1
    manifest = read_manifest(stage).to_pylist()
    assert sum(r["nsamples"] for r in manifest) == n and all(r["nsamples"] <= 40 for r in manifest)
    index = json.loads(open(os.path.join(stage, "index.wids.json")).read())
    assert [s["url"] for s in index["shardlist"]] == [os.path.basename(u) for u in urls]
    assert read_table(join(stage, "samples.parquet")).num_rows == n


def test_composition_table_accounts_for_every_image(retrieved, tmp_path):
    pool, sets, retrieve = retrieved
    stage = str(tmp_path / "shards")
    write_curated_shards(retrieve, pool.crawl_uri, stage, ShardConfig(samples_per_shard=100), sets)
    rows = {(r["dataset"], r["rule"]): r for r in composition_table(stage)}
    sample, as_is = rows[("fmnist", "sample")], rows[("curated", "as-is")]
    assert sample["queries"] == 60 and sample["candidates"] == 180
    assert sample["final"] + sample["collisions"] + sample["capped"] == 180
    assert as_is["final"] == 60
    md = composition_markdown(composition_table(stage))
    assert "| fmnist | sample | 60 | 180 |" in md and f"**{sample['final'] + 60:,}**" in md


def test_byte_limit_seed_determinism_and_resume(retrieved, tmp_path):
    pool, sets, retrieve = retrieved
    cfg = ShardConfig(samples_per_shard=1000, max_shard_bytes=1 << 16, seed=3)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_curated_shards(retrieve, pool.crawl_uri, a, cfg, sets)
    write_curated_shards(retrieve, pool.crawl_uri, b, cfg, sets)
    ma, mb = read_manifest(a).to_pylist(), read_manifest(b).to_pylist()
    assert [r["sha256"] for r in ma] == [r["sha256"] for r in mb] and len(ma) >= 3
    assert all(r["nbytes"] <= (1 << 16) + 10240 for r in ma)  # + tar record padding
    c = str(tmp_path / "c")
    write_curated_shards(retrieve, pool.crawl_uri, c, cfg.model_copy(update={"seed": 4}), sets)
    assert [r["sha256"] for r in read_manifest(c).to_pylist()] != [r["sha256"] for r in ma]
    # Crash after some shards: no commit, shard 1 missing. The rerun rewrites only what is missing.
    os.remove(os.path.join(a, "_COMMITTED.json"))
    os.remove(os.path.join(a, "lvd-000001.tar"))
    os.remove(os.path.join(a, "_parts", "lvd-000001.json"))
    mtime0 = os.stat(os.path.join(a, "lvd-000000.tar")).st_mtime_ns
    write_curated_shards(retrieve, pool.crawl_uri, a, cfg, sets)
    assert [r["sha256"] for r in read_manifest(a).to_pylist()] == [r["sha256"] for r in ma]
    assert os.stat(os.path.join(a, "lvd-000000.tar")).st_mtime_ns == mtime0
    assert read_commit(a)["counts"]["shards"] == len(ma)


def test_as_is_images_need_their_query_set(retrieved, tmp_path):
    pool, sets, retrieve = retrieved
    with pytest.raises(QuerySetError, match="curated"):
        write_curated_shards(retrieve, pool.crawl_uri, str(tmp_path / "s"), ShardConfig(), sets[:1])


def test_shards_on_s3_read_with_plain_webdataset(retrieved, s3_root):
    pool, sets, retrieve = retrieved
    stage = join(s3_root, "demo", "v1", "shards")
    commit = write_curated_shards(retrieve, pool.crawl_uri, stage, ShardConfig(samples_per_shard=64), sets)
    urls = list_files(stage, ".tar")
    assert len(urls) == commit["counts"]["shards"] and urls[0].startswith("s3://")
    assert sum(1 for _ in wds.WebDataset(urls, shardshuffle=False)) == commit["counts"]["samples"]


def test_contact_sheets_from_stage_outputs(retrieved):
    import io

    from PIL import Image, ImageDraw

    from tasks.pictures import label_column_width

    from tasks.retrieve.report import cluster_contact_sheet, neighbour_contact_sheet

    pool, sets, retrieve = retrieved
    clusters = Image.open(io.BytesIO(cluster_contact_sheet(retrieve, pool.crawl_uri, n_clusters=3, per_cluster=5, seed=0)))
    # Three rows of five 64-px thumbnails (4-px gaps) after a label column sized to the labels (60-240 px).
    label_width = clusters.size[0] - (5 * 68 + 4)
    assert clusters.size[1] == 3 * 68 + 4 and 60 <= label_width <= 240
    neighbours = Image.open(io.BytesIO(neighbour_contact_sheet(retrieve, pool.crawl_uri, sets[0], n_queries=4, per_query=3)))
    # One row per query: the query itself, then up to three retrieved images.
    selection = read_selection(retrieve).to_pylist()
    qids = sorted({r["query_id"] for r in selection if r["query_dataset"] == sets[0].name and r["source"] == "pool"
                   and r["query_id"]})[:4]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = label_column_width(measure, [q.rsplit("/", 1)[-1] for q in qids])
    assert neighbours.size[1] == 4 * 68 + 4 and neighbours.size[0] <= label_width + 4 * 68 + 4
    x = label_width + 4
    assert np.asarray(neighbours.convert("L"))[4:68, x:x + 64].std() > 10  # the query thumbnail is a real image


def test_committed_shards_are_immutable_and_stale_parts_are_not_reused(retrieved, tmp_path):
    from storage.commit import StageConflict

    pool, sets, retrieve = retrieved
    stage = str(tmp_path / "s")
    first = write_curated_shards(retrieve, pool.crawl_uri, stage, ShardConfig(samples_per_shard=50, seed=0), sets)
    assert write_curated_shards(retrieve, pool.crawl_uri, stage, ShardConfig(samples_per_shard=50, seed=0), sets) == first
    with pytest.raises(StageConflict):
        write_curated_shards(retrieve, pool.crawl_uri, stage, ShardConfig(samples_per_shard=50, seed=9), sets)
    # An unfinished run with another seed leaves parts; a new run must not reuse them.
    os.remove(os.path.join(stage, "_COMMITTED.json"))
    other = write_curated_shards(retrieve, pool.crawl_uri, stage, ShardConfig(samples_per_shard=50, seed=9), sets)
    fresh = write_curated_shards(retrieve, pool.crawl_uri, str(tmp_path / "fresh"),
                                 ShardConfig(samples_per_shard=50, seed=9), sets)
    assert [r["sha256"] for r in read_manifest(stage).to_pylist()] == [r["sha256"] for r in read_manifest(str(tmp_path / "fresh")).to_pylist()]
    assert other["counts"] == fresh["counts"]

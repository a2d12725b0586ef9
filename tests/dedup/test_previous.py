"""Dedup of a refresh: copies of images an earlier version kept are removed through its persisted index."""
import os

import pytest

from storage.commit import read_commit
from storage.tables import read_table
from storage.uri import join
from tasks.dedup.config import DedupConfig
from tasks.dedup.embedder import load_copy_embedder
from tasks.dedup.planted import planted_pool, write_crawl_stage
from tasks.dedup.previous import PREVIOUS, read_index_manifest
from tasks.dedup.stage import run_dedup


@pytest.fixture(scope="module")
def pool():
    return planted_pool(n_with_copies=6, edits=("exact", "reencode", "resize"), seed=3)


def test_copies_of_earlier_kept_images_are_removed_by_reference(tmp_path, pool):
    cfg = DedupConfig(hash_method="phash", batch_size=32)
    embedder = load_copy_embedder(cfg)
    root = str(tmp_path / "ds")
    originals = [it for it in pool if it.edit == "original"]
    copies = [it for it in pool if it.edit != "original"]
    write_crawl_stage(join(root, "v1", "crawl"), originals, shard_size=10)
    write_crawl_stage(join(root, "v2", "crawl"), copies, shard_size=10)
    v1 = run_dedup(join(root, "v1", "crawl"), join(root, "v1", "dedup"), cfg, embedder)
    v2 = run_dedup(join(root, "v2", "crawl"), join(root, "v2", "dedup"), cfg, embedder,
                   previous=join(root, "v1", "dedup"))

    kept_v1 = {r["key"] for r in read_table(join(root, "v1", "dedup", "keep.parquet")).to_pylist() if r["kept"]}
    rows = read_table(join(root, "v2", "dedup", "keep.parquet")).to_pylist()
    source_of = {it.key: it.source for it in pool}
    original_of = {it.source: it.key for it in originals}
    earlier = [r for r in rows if r["reason"] == PREVIOUS]
    # every copy survived its own batch or was removed in it; the survivors all point at a v1 image
    assert {r["key"] for r in rows if r["kept"]} == set(), [(r["key"], r["reason"]) for r in rows if r["kept"]]
    assert len(earlier) == len({it.source for it in copies}) == v2["counts"][f"removed_{PREVIOUS}"]
    for r in earlier:
        assert r["representative"] in kept_v1
        assert r["representative"] == original_of[source_of[r["key"]]]
    assert v2["extra"]["previous_version"]["index_images"] == v1["counts"]["kept"]

    index = read_index_manifest(join(root, "v2", "dedup"))
    assert [r["version"] for r in index] == ["v1"] * len(read_index_manifest(join(root, "v1", "dedup"))) + \
        ["v2"] * (len(index) - len(read_index_manifest(join(root, "v1", "dedup"))))
    assert all(r["meta"].startswith(join(root, "v1", "dedup")) for r in index if r["version"] == "v1")
    assert sorted(os.listdir(tmp_path / "ds" / "v2" / "dedup" / "parts")) == sorted(
        r["part"] for r in index if r["version"] == "v2"), "earlier parts are referenced, never copied"
    assert read_commit(join(root, "v2", "dedup"))["extra"]["index_parts"] == len(index)

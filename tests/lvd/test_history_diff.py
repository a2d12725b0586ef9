"""`lvd diff` compares versions by content: shards by sha256, samples by the sha256 of their image."""
from __future__ import annotations

import hashlib

import pytest

from lvd.history import diff_versions, format_diff
from storage.commit import commit_stage, stage_uri
from storage.shards import ShardWriter, write_manifest
from storage.tables import SCHEMAS, write_table
from storage.uri import join


def image(i: int) -> bytes:
    return f"not really a jpeg, but bytes of image {i}".encode()


@pytest.fixture
def make(tmp_path):
    root = tmp_path.as_uri()

    def build(version: str, shards: list[list[int]], samples_table: bool = True) -> str:
        out = stage_uri(root, "ds", version, "shards")
        infos, rows = [], []
        for k, images in enumerate(shards):
            name = f"lvd-{k:06d}.tar"
            w = ShardWriter(join(out, name))
            for j, i in enumerate(images):
                key = f"{k:06d}_{j:06d}"
                w.write(key, {"jpg": image(i), "json": {"url": f"http://example.com/{i}.jpg"}})
                rows.append({"key": key, "shard": name, "source": "pool", "query_dataset": None,
                             "query_id": None, "rule": "sample", "pool_key": None, "pool_shard": None,
                             "similarity": 1.0, "cluster": None, "url": f"http://example.com/{i}.jpg",
                             "sha256": hashlib.sha256(image(i)).hexdigest()})
            infos.append(w.close())
        write_manifest(out, infos)
        if samples_table:
            write_table(join(out, "samples.parquet"), rows, SCHEMAS["shards.samples"])
        commit_stage(out, stage="shards", config_digest="c", input_digest=version,
                     counts={"shards": len(infos), "samples": len(rows)})
        return join(root, "ds", version)

    return build


@pytest.mark.parametrize("samples_table", [True, False])
def test_byte_identical_shards_under_other_urls_are_no_change(make, samples_table):
    a = make("v1", [[1, 2, 3], [4, 5]], samples_table)
    b = make("v2", [[1, 2, 3], [4, 5]], samples_table)
    d = diff_versions(a, b)
    assert d["shards_reused"] == 2 and d["shards_added"] == [] and d["shards_removed"] == []
    assert (d["samples_added"], d["samples_removed"], d["bytes_added"], d["bytes_removed"]) == (0, 0, 0, 0)
    assert "added 0  removed 0" in format_diff(d)


@pytest.mark.parametrize("samples_table", [True, False])
def test_changed_shards_count_only_the_samples_whose_content_changed(make, samples_table):
    a = make("v1", [[1, 2, 3], [4, 5], [6, 7]], samples_table)
    # shard 0 identical; 4 and 5 moved into a shard with a new image 8; 6 gone, 7 kept elsewhere
    b = make("v2", [[1, 2, 3], [5, 4, 8], [7]], samples_table)
    d = diff_versions(a, b)
    assert d["shards_reused"] == 1 and len(d["shards_added"]) == 2 and len(d["shards_removed"]) == 2
    assert d["samples_a"] == 7 and d["samples_b"] == 7
    assert d["samples_added"] == 1 and d["samples_removed"] == 1

import io

import numpy as np
import pytest
from PIL import Image

from storage.shards import ShardWriter, write_manifest
from storage.uri import join
from tasks.train.data import (
    ImageFolderSource,
    ShardsSource,
    Source,
    open_source,
    plan_epoch,
)


class ToySource(Source):
    """Images whose single pixel value is their global index."""

    def __init__(self, sizes):
        self.sizes = list(sizes)
        self.starts = np.cumsum([0] + self.sizes)

    def shard_sizes(self):
        return self.sizes

    def read_shard(self, index):
        return [(str(self.starts[index] + i), int(self.starts[index] + i)) for i in range(self.sizes[index])]

    def decode(self, raw):
        return Image.fromarray(np.full((2, 2), raw % 256, dtype=np.uint8), mode="L")


@pytest.mark.parametrize("sizes,n_slots", [([5, 7, 3, 9], 2), ([5, 7, 3], 4), ([11], 3)])
def test_epoch_plans_are_disjoint_and_complete(sizes, n_slots):
    src = ToySource(sizes)
    seen = []
    for slot in range(n_slots):
        for sid, idx in plan_epoch(sizes, 0, 3, slot, n_slots).shards:
            seen += [src.starts[sid] + i for i in idx]
    assert sorted(seen) == list(range(sum(sizes)))
    assert plan_epoch(sizes, 0, 3, 0, n_slots).shards[0][1].tolist() == plan_epoch(sizes, 0, 3, 0, n_slots).shards[0][1].tolist()
    other = [idx.tolist() for _, idx in plan_epoch(sizes, 0, 4, 0, n_slots).shards]
    assert other != [idx.tolist() for _, idx in plan_epoch(sizes, 0, 3, 0, n_slots).shards]


def _jpeg(value):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_committed_shards_source(tmp_path):
    from storage.commit import StageNotCommitted, commit_stage, publish_latest, stage_uri

    root = f"file://{tmp_path}"
    stage = stage_uri(root, "lvd", "v1", "shards")
    infos = []
    for s in range(2):
        with ShardWriter(join(stage, f"lvd-{s:06d}.tar")) as w:
            for i in range(3):
                w.write(f"s{s}-{i}", {"jpg": _jpeg(10 * s + i), "json": {"url": "x"}})
        infos.append(w.close())
    write_manifest(stage, infos)
    with pytest.raises(StageNotCommitted):
        open_source(stage)
    commit_stage(stage, stage="shards", config_digest="c", input_digest="i", counts={"samples": 6})
    publish_latest(root, "lvd", "v1", ["shards"])
    assert open_source(f"{root}/lvd/latest/shards").stage_uri == stage
    src = open_source(stage)
    assert isinstance(src, ShardsSource) and src.shard_sizes() == [3, 3]
    key, raw = src.read_shard(1)[2]
    assert key == "s1-2" and src.decode(raw).getpixel((0, 0))[0] == 12


def test_image_folder_source(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(3):
        Image.new("RGB", (5, 5), (i, i, i)).save(tmp_path / "a" / f"{i}.png")
    (tmp_path / "notes.txt").write_text("x")
    src = open_source(str(tmp_path))
    assert isinstance(src, ImageFolderSource) and len(src) == 3
    assert src.decode(src.read_shard(0)[1][1]).size == (5, 5)

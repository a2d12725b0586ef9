import io

import numpy as np
import pytest
import torch
from PIL import Image

from storage.shards import ShardWriter, write_manifest
from storage.uri import join
from tasks.train.data import (
    ImageFolderSource,
    Position,
    ResumableLoader,
    ShardsSource,
    Source,
    iter_slot,
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


def _transform(img, g):
    # the sample's value plus a draw from its generator: proves crops are seeded per sample
    return {"v": torch.tensor(float(np.asarray(img)[0, 0])), "r": torch.rand((), generator=g)}


def _collate(samples, g):
    return {"v": torch.stack([s["v"] for s in samples]), "r": torch.stack([s["r"] for s in samples]),
            "m": torch.rand((), generator=g)}


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


def test_stream_resumes_mid_shard_and_crosses_epochs():
    src = ToySource([4, 6])
    full = [(k, here, after) for k, _, here, after in _take(iter_slot(src, 1, 0, 1, Position()), 25)]
    assert sorted(int(k) for k, _, _ in full[:10]) == list(range(10))
    assert full[10][1].epoch == 1
    resumed = [k for k, _, _, _ in _take(iter_slot(src, 1, 0, 1, full[6][2]), 18)]
    assert resumed == [k for k, _, _ in full[7:26]]


def _take(it, n):
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_state_resumes_exactly(num_workers):
    src = ToySource([7, 5, 9, 4, 6])
    def make(state=None):
        return ResumableLoader(src, _transform, _collate, batch_size=3, seed=5, num_workers=num_workers, state=state)
    ref = make()
    batches = [next(ref) for _ in range(12)]
    first = make()
    for _ in range(5):
        next(first)
    state = first.state_dict()
    second = make(state)
    rest = [next(second) for _ in range(7)]
    for a, b in zip(batches[5:], rest):
        assert torch.equal(a["v"], b["v"]) and torch.equal(a["r"], b["r"]) and torch.equal(a["m"], b["m"])
    if num_workers == 0:
        values = torch.cat([b["v"] for b in batches[:10]]).tolist()
        assert len(set(values)) == len(values) == 30  # 31 images: no repeat within the first epoch


def test_ranks_read_disjoint_samples():
    src = ToySource([8, 8, 8, 8])
    seen = []
    for rank in range(2):
        loader = ResumableLoader(src, _transform, _collate, batch_size=4, seed=0, rank=rank, world_size=2)
        seen += torch.cat([next(loader)["v"] for _ in range(4)]).tolist()
    assert sorted(seen) == list(range(32))


def test_changed_layout_is_refused():
    src = ToySource([4])
    loader = ResumableLoader(src, _transform, _collate, batch_size=2, seed=0)
    next(loader)
    with pytest.raises(ValueError, match="cannot be resumed"):
        ResumableLoader(src, _transform, _collate, batch_size=4, seed=0, state=loader.state_dict())


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

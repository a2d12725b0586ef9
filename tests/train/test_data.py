import io

import numpy as np
import torch
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


# ---- whole-source order ---------------------------------------------------------------------

CLASSES, PER_CLASS = 10, 240  # 2,400 files: more than two 1,000-image chunks


@pytest.fixture(scope="module")
def class_sorted_folder(tmp_path_factory):
    """One subfolder per class, files sorted class by class; each image's pixel value is its class."""
    root = tmp_path_factory.mktemp("sorted")
    for c in range(CLASSES):
        (root / f"class{c}").mkdir()
        for i in range(PER_CLASS):
            Image.new("L", (2, 2), c).save(root / f"class{c}" / f"{i:04d}.png")
    return str(root)


def _class_transform(img, generator):
    value = torch.tensor(float(np.asarray(img)[0, 0, 0]))
    return {"global_crops": [value.expand(3, 2, 2).clone()], "local_crops": []}


def _batches(source, order, steps, batch=40, seed=0, **kw):
    from models.collate import MultiCropCollator
    from tasks.train.global_batches import GlobalBatchLoader

    loader = GlobalBatchLoader(source, _class_transform, MultiCropCollator(patch_size=2, mask_probability=0.0),
                               batch, seed=seed, streams=4, order=order, **kw)
    out = [next(loader)["collated_global_crops"][:, 0, 0, 0].long().tolist() for _ in range(steps)]
    return out, loader


def test_global_order_mixes_a_class_sorted_folder(class_sorted_folder):
    source = ImageFolderSource(class_sorted_folder)
    epoch = len(source) // 40
    mixed, _ = _batches(source, "global", epoch)
    chunked, _ = _batches(source, "shards", epoch)
    # one epoch reads every file once, in batches that hold nearly every class in near-equal shares
    assert sorted(sum(mixed, [])) == sorted(c for c in range(CLASSES) for _ in range(PER_CLASS))
    distinct = [len(set(b)) for b in mixed]
    top_share = [max(np.bincount(b, minlength=CLASSES)) / len(b) for b in mixed]
    assert np.mean(distinct) >= 9 and min(distinct) >= 7 and max(top_share) <= 0.35
    # the chunked order gives batches of a few neighbouring classes
    assert np.mean([len(set(b)) for b in chunked]) <= 5


def test_global_order_follows_the_seed_and_the_epoch(class_sorted_folder):
    source = ImageFolderSource(class_sorted_folder)
    from tasks.train.global_batches import stream_index

    index = stream_index(source, seed=3, streams=4, order="global")
    per_epoch = len(source) // 4
    first = [index.locate(0, p)[1] for p in range(per_epoch)]
    second = [index.locate(0, p)[1] for p in range(per_epoch, 2 * per_epoch)]
    assert first == [stream_index(source, 3, 4, "global").locate(0, p)[1] for p in range(per_epoch)]
    assert first != [stream_index(source, 4, 4, "global").locate(0, p)[1] for p in range(per_epoch)]
    assert first != second
    for epoch in range(2):  # every epoch, the streams share one permutation of the whole folder
        shares = [{index.locate(k, p)[1] for p in range(epoch * per_epoch, (epoch + 1) * per_epoch)} for k in range(4)]
        assert set().union(*shares) == set(range(len(source))) and sum(map(len, shares)) == len(source)


def test_global_order_resumes_where_it_stood(class_sorted_folder):
    source = ImageFolderSource(class_sorted_folder)
    whole, _ = _batches(source, "global", 80, batch=36)  # past the first epoch (2,400 / 36 steps)
    _, loader = _batches(source, "global", 70, batch=36)
    state = loader.state_dict()
    resumed, _ = _batches(source, "global", 10, batch=36, step=70, state=state)
    assert resumed == whole[70:]
    # at another number of processes, the two ranks' rows are the same global batches
    ranks = [_batches(source, "global", 10, batch=18, step=70, state=state, rank=r, world_size=2)[0]
             for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == whole[70:]


def test_an_unknown_order_is_refused(class_sorted_folder):
    with pytest.raises(ValueError, match="unknown data order 'random'"):
        _batches(ImageFolderSource(class_sorted_folder), "random", 1)

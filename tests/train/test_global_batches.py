"""The global batch of a step is the same images, crops and masks whatever the number of processes."""

import numpy as np
import pytest
import torch
from PIL import Image

from models.collate import MultiCropCollator
from tasks.train.build import build_augmentation, build_collate
from tasks.train.data import FashionMnistSource, Source, plan_epoch
from tasks.train.global_batches import GlobalBatchLoader, StreamIndex, StreamSchedule
from tests.train.conftest import needs_fashion_mnist, tiny_config


class NumberedSource(Source):
    """Images whose pixel value is their global index (up to 255)."""

    def __init__(self, sizes):
        self.sizes = list(sizes)
        self.starts = np.cumsum([0] + self.sizes)

    def shard_sizes(self):
        return self.sizes

    def read_shard(self, index):
        return [(str(self.starts[index] + i), int(self.starts[index] + i)) for i in range(self.sizes[index])]

    def decode(self, raw):
        return Image.fromarray(np.full((4, 4), raw, dtype=np.uint8), mode="L")


def _identity(img, g):
    value = torch.tensor(float(np.asarray(img)[0, 0]))
    return {"global_crops": [value.expand(3, 4, 4).clone()], "local_crops": []}


def _ids(batch):
    return batch["collated_global_crops"][:, 0, 0, 0].long().tolist()


def _rank_slices(full, parts, n_global):
    """Rows of a one-process batch rebuilt from the ranks' batches (crop-major in both)."""
    out = []
    for c in range(n_global):
        for part in parts:
            b = len(part) // n_global
            out.append(part[c * b : (c + 1) * b])
    return torch.cat(out)


@needs_fashion_mnist
@pytest.mark.parametrize("world,workers,streams", [(2, 0, 4), (4, 2, 4), (2, 1, 3)])
def test_ranks_hold_slices_of_the_one_process_batch(world, workers, streams):
    cfg = tiny_config(crops=dict(color_jitter_p=0.8), loss=dict(mask_probability=0.5))
    source = FashionMnistSource(limit=3000)
    aug, collate = build_augmentation(cfg), build_collate(cfg)
    one = GlobalBatchLoader(source, aug, collate, 16, seed=3, streams=streams)
    full = [next(one) for _ in range(3)]
    ranks = [GlobalBatchLoader(source, aug, collate, 16 // world, 3, r, world, workers, streams=streams)
             for r in range(world)]
    for step in range(3):
        parts = [next(loader) for loader in ranks]
        for key, n_crops in (("collated_global_crops", 2), ("collated_local_crops", 2), ("collated_masks", 2)):
            rebuilt = _rank_slices(full[step][key], [p[key] for p in parts], n_crops)
            assert torch.equal(rebuilt, full[step][key]), (step, key)
        assert 0 < full[step]["collated_masks"].any(dim=1).sum() <= int(32 * 0.5)  # half drawn, tiny grids fail some
        assert sum(int(p["n_masked_patches"]) for p in parts) == int(full[step]["n_masked_patches"])
        for p in parts:
            assert int(p["n_masked_patches"]) <= p["upperbound"]
    for loader in ranks:
        loader.close()
    assert not torch.equal(full[0]["collated_global_crops"], full[1]["collated_global_crops"])


def test_resume_at_another_world_size_continues_the_order():
    source = NumberedSource([7, 6, 9, 8, 6, 8])
    collate = MultiCropCollator(patch_size=2, mask_probability=0.0)
    one = GlobalBatchLoader(source, _identity, collate, 6, seed=1, streams=3)
    order = [_ids(next(one)) for _ in range(6)]
    first_epoch = sum(order[:6], [])
    assert len(set(first_epoch)) == len(first_epoch)  # 36 of 44 images, none twice (every stream holds 12 or more)
    stopped = GlobalBatchLoader(source, _identity, collate, 6, seed=1, streams=3)
    for _ in range(2):
        next(stopped)
    state = stopped.state_dict()
    assert state == {"streams": 3, "global_batch": 6, "step": 2, "positions": [4, 4, 4]}
    for world in (1, 2, 3):
        ranks = [GlobalBatchLoader(source, _identity, collate, 6 // world, 1, r, world, step=2, streams=3, state=state)
                 for r in range(world)]
        for step in range(2, 6):
            assert sum((_ids(next(loader)) for loader in ranks), []) == order[step]


def test_resized_loader_continues_every_stream():
    source = NumberedSource([10, 10, 10, 10])
    collate = MultiCropCollator(patch_size=2, mask_probability=0.0)
    loader = GlobalBatchLoader(source, _identity, collate, 4, seed=0, streams=2)
    seen = _ids(next(loader)) + _ids(next(loader))
    bigger = loader.resized(_identity, collate, 8)
    seen += _ids(next(bigger)) + _ids(next(bigger))
    assert bigger.state_dict()["positions"] == [2 + 2 + 4 + 4, 2 + 2 + 4 + 4]
    assert len(set(seen)) == 24


@pytest.mark.parametrize("sizes,streams", [([5, 7, 3, 9], 2), ([5, 7, 3], 4), ([11], 3)])
def test_each_stream_epoch_is_its_share_of_the_data(sizes, streams):
    index = StreamIndex(sizes, seed=0, streams=streams)
    starts = np.cumsum([0] + sizes)
    seen = []
    for k in range(streams):
        length = sum(len(idx) for _, idx in plan_epoch(sizes, 0, 0, k, streams).shards)
        first = [starts[s] + i for s, i in (index.locate(k, p) for p in range(length))]
        second = [starts[s] + i for s, i in (index.locate(k, p) for p in range(length, 2 * length))]
        assert first != second or length == 1
        seen += first
    assert sorted(seen) == list(range(sum(sizes)))


def test_every_stream_advances_alike_whatever_the_batch():
    uneven = StreamSchedule(10, 4)
    assert [uneven.shares(s) for s in range(3)] == [[3, 3, 2, 2], [2, 2, 3, 3], [3, 3, 2, 2]]
    assert uneven.stream_positions(2) == [5, 5, 5, 5]
    small = StreamSchedule(3, 4)  # fewer images per step than streams: all are read in turn
    assert [small.shares(s) for s in range(4)] == [[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]]
    assert small.stream_positions(4) == [3, 3, 3, 3]
    # a schedule continued from saved positions (e.g. after a change of batch) goes on from them
    resumed = StreamSchedule(10, 4, origin_step=7, positions=(40, 41, 42, 43))
    assert resumed.stream_positions(9) == [45, 46, 47, 48]
    pieces = uneven.pieces(1, 5, 10)  # rows 5-9 of step 1, shares [2, 2, 3, 3] from positions [3, 3, 2, 2]
    assert [(p.stream, p.position, p.row, p.n) for p in pieces] == [(2, 3, 5, 2), (3, 2, 7, 3)]


def test_a_global_batch_the_world_does_not_split_is_refused_naming_the_key():
    cfg = tiny_config(optim=dict(global_batch_size=16))
    assert [cfg.rank_batch_size(w) for w in (1, 2, 4, 8)] == [16, 8, 4, 2]
    with pytest.raises(ValueError, match="optim.global_batch_size=16 does not split over 3 processes"):
        cfg.rank_batch_size(3)
    with pytest.raises(ValueError, match="leaves 1 image per process; KoLeo"):
        cfg.rank_batch_size(16)


def test_changed_streams_are_refused():
    source = NumberedSource([8, 8])
    collate = MultiCropCollator(patch_size=2, mask_probability=0.0)
    loader = GlobalBatchLoader(source, _identity, collate, 4, seed=0, streams=2)
    next(loader)
    with pytest.raises(ValueError, match="data.streams=2, this run has data.streams=4"):
        GlobalBatchLoader(source, _identity, collate, 4, seed=0, streams=4, step=1, state=loader.state_dict())


class CountingSource(NumberedSource):
    def __init__(self, sizes):
        super().__init__(sizes)
        self.reads = 0

    def read_shard(self, index):
        self.reads += 1
        return super().read_shard(index)


def test_one_process_reading_every_stream_reads_each_shard_once_an_epoch():
    source = CountingSource([6] * 8)
    collate = MultiCropCollator(patch_size=2, mask_probability=0.0)
    loader = GlobalBatchLoader(source, _identity, collate, 8, seed=0, streams=4)
    seen = sum((_ids(next(loader)) for _ in range(6)), [])  # 48 images: one epoch of every stream
    assert sorted(seen) == list(range(48)) and source.reads == 8

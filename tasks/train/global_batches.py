"""Training batches that do not depend on the number of processes.

A run reads its data as ``S`` *streams* (``data.streams``, fixed for the run): stream k reads,
epoch after epoch, the shards (or the share of samples) that :func:`tasks.train.data.plan_epoch`
deals to slot k of S, each shard in a seeded order. The global batch of a step is the next c_0
samples of stream 0, then the next c_1 of stream 1, ... (G // S each, plus one from G % S streams
in rotation, so all streams advance alike), and process r of W takes rows ``[r*G/W, (r+1)*G/W)``
of it. Every random draw is tied to the global batch rather than to a process:

- the crops, flips and colour jitter of a sample come from a generator seeded by
  (seed, stream, position in the stream), i.e. by the sample's place in the global order;
- the iBOT masks come from (seed, global step, row of the global batch)
  (:func:`models.masking.masks_for_rows`), with the masked share and its ratio strata dealt
  over the whole global batch.

So 1 x 16, 2 x 8 and 4 x 4 processes see the same images, crops and masks at every step. Where
S is a multiple of W each process reads only its own streams' shards, and where a process's
DataLoader has as many workers as it has stream pieces each worker reads its own; other layouts
give the same batches and read some shards more than once.

With ``order='global'`` a ``random_access`` source is read as one shard holding all its samples,
so each stream takes every S-th sample of one permutation of the whole source per epoch, and
samples are read one by one (:class:`SampleReader`) instead of shard by shard.

The data position is one integer per stream. The checkpoint stores it (it is the same on every
process), so a run resumes, at any world size, with the batch that would have come next; a
changed global batch (another number of processes at the same ``batch_size_per_rank``, or a new
training phase) continues every stream where it stands.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from models.collate import MultiCropCollator
from tasks.train.data import SampleTransform, Source, mix_seed, batch_loader, plan_epoch, stop_loader_workers

_MASKS = 0x6D61736B  # keeps the mask seeds of a step apart from every sample seed


@dataclass(frozen=True)
class Piece:
    """Rows ``[row, row + n)`` of the global batch: samples ``[position, position + n)`` of ``stream``."""

    stream: int
    position: int
    row: int
    n: int


@dataclass(frozen=True)
class StreamSchedule:
    """Which samples of which stream fill each row of the global batch, step after step.

    Every step takes ``G // S`` samples of each stream plus one more from ``G % S`` of them; that
    extra share rotates over the streams from step to step, so every stream advances at the same
    rate (and a batch smaller than S still reads all streams in turn). ``positions`` are the
    streams' next positions at ``origin_step``.
    """

    global_batch: int
    streams: int
    origin_step: int = 0
    positions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.positions is not None and len(self.positions) != self.streams:
            raise ValueError(f"{len(self.positions)} stream positions for {self.streams} streams")

    def _extra_before(self, stream: int, step: int) -> int:
        """Extra samples stream ``stream`` gave in steps [0, step)."""
        dealt = step * (self.global_batch % self.streams)
        return max(0, -(-(dealt - stream) // self.streams))

    def shares(self, step: int) -> list[int]:
        base, extra = divmod(self.global_batch, self.streams)
        first = (step * extra) % self.streams
        return [base + (1 if (k - first) % self.streams < extra else 0) for k in range(self.streams)]

    def stream_positions(self, step: int) -> list[int]:
        """Each stream's next position at ``step`` (>= origin_step)."""
        if step < self.origin_step:
            raise ValueError(f"step {step} comes before the data position's step {self.origin_step}")
        base = self.global_batch // self.streams
        origin = self.positions or (0,) * self.streams
        return [
            origin[k] + base * (step - self.origin_step) + self._extra_before(k, step) - self._extra_before(k, self.origin_step)
            for k in range(self.streams)
        ]

    def pieces(self, step: int, lo: int, hi: int) -> list[Piece]:
        """The stream pieces that fill rows ``[lo, hi)`` of the global batch of ``step``."""
        out, start = [], 0
        for k, (share, position) in enumerate(zip(self.shares(step), self.stream_positions(step))):
            a, b = max(lo, start), min(hi, start + share)
            if a < b:
                out.append(Piece(k, position + a - start, a, b - a))
            start += share
        return out


class StreamIndex:
    """Where sample ``position`` of stream ``k`` lies: (shard id, index of the sample in the shard)."""

    def __init__(self, sizes: Sequence[int], seed: int, streams: int, cached_plans: int = 8) -> None:
        self.sizes, self.seed, self.streams = list(sizes), seed, streams
        total = sum(self.sizes)
        if total < streams:
            raise ValueError(f"the data holds {total} images, fewer than data.streams={streams}")
        self._epoch_ends: dict[int, list[int]] = {}
        self._plans: OrderedDict[tuple[int, int], tuple[list, np.ndarray]] = OrderedDict()
        self._cached = cached_plans

    def _plan(self, stream: int, epoch: int) -> tuple[list, np.ndarray]:
        key = (stream, epoch)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        shards = plan_epoch(self.sizes, self.seed, epoch, stream, self.streams).shards
        value = (shards, np.cumsum([len(idx) for _, idx in shards], dtype=np.int64))
        self._plans[key] = value
        while len(self._plans) > self._cached:
            self._plans.popitem(last=False)
        return value

    def locate(self, stream: int, position: int) -> tuple[int, int]:
        ends = self._epoch_ends.setdefault(stream, [])
        while not ends or ends[-1] <= position:
            _, shard_ends = self._plan(stream, len(ends))
            ends.append((ends[-1] if ends else 0) + int(shard_ends[-1] if len(shard_ends) else 0))
            if len(ends) > 1 and ends[-1] == ends[-2]:
                raise ValueError(f"data stream {stream} of {self.streams} gets no samples")
        epoch = bisect.bisect_right(ends, position)
        offset = position - (ends[epoch - 1] if epoch else 0)
        shards, shard_ends = self._plan(stream, epoch)
        j = int(np.searchsorted(shard_ends, offset, side="right"))
        sid, idx = shards[j]
        return int(sid), int(idx[offset - (int(shard_ends[j - 1]) if j else 0)])


class ShardCache:
    """The shards a worker is reading, the last two per stream (a stream piece may straddle two
    shards), so a worker that serves several streams does not read their shards again each step."""

    def __init__(self, source: Source, per_stream: int = 2) -> None:
        self.source, self.per_stream = source, per_stream
        self._streams: dict[int, OrderedDict[int, list]] = {}

    def sample(self, stream: int, shard: int, index: int) -> tuple[str, Any]:
        shards = self._streams.setdefault(stream, OrderedDict())
        if shard not in shards:
            samples = self.source.read_shard(shard)
            expected = self.source.shard_sizes()[shard]
            if len(samples) != expected:
                raise ValueError(f"shard {shard} holds {len(samples)} samples, expected {expected}")
            shards[shard] = samples
            while len(shards) > self.per_stream:
                shards.popitem(last=False)
        shards.move_to_end(shard)
        return shards[shard][index]


class SampleReader:
    """Samples of a ``random_access`` source read one at a time (its whole-source order has one shard)."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def sample(self, stream: int, shard: int, index: int) -> tuple[str, Any]:
        return self.source.read_sample(index)


def reads_whole(source: Source, order: str) -> bool:
    """Whether ``source`` is read in one permutation of all its samples (``order='global'``)."""
    if order not in ("global", "shards"):
        raise ValueError(f"unknown data order {order!r}: use 'global' or 'shards'")
    return order == "global" and source.random_access


def stream_index(source: Source, seed: int, streams: int, order: str) -> StreamIndex:
    """Where each stream's samples lie in ``source`` read in ``order``."""
    sizes = [len(source)] if reads_whole(source, order) else source.shard_sizes()
    return StreamIndex(sizes, seed, streams)


class GlobalBatchParts(IterableDataset):
    """Endless parts of one process's rows of the global batches.

    Item t is row group ``t % len(groups)`` of step ``start_step + t // len(groups)``; DataLoader
    worker w makes items w, w + n_workers, ... (the DataLoader takes them round-robin, so in
    order). A part holds its crops stacked per crop index, (crops, rows, ...), and their iBOT masks.
    """

    def __init__(
        self,
        source: Source,
        transform: SampleTransform,
        collate: MultiCropCollator,
        seed: int,
        schedule: StreamSchedule,
        groups: Sequence[tuple[int, int]],
        start_step: int,
        order: str = "shards",
    ) -> None:
        super().__init__()
        self.source, self.transform, self.collate = source, transform, collate
        self.seed, self.schedule, self.groups, self.start_step = seed, schedule, list(groups), start_step
        self.order = order

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index = stream_index(self.source, self.seed, self.schedule.streams, self.order)
        cache = SampleReader(self.source) if reads_whole(self.source, self.order) else ShardCache(self.source)
        t = worker
        while True:
            step, group = self.start_step + t // len(self.groups), t % len(self.groups)
            yield self.part(index, cache, step, group)
            t += n_workers

    def part(self, index: StreamIndex, cache: ShardCache | SampleReader, step: int, group: int) -> dict[str, Any]:
        samples, rows = [], []
        for piece in self.schedule.pieces(step, *self.groups[group]):
            for i in range(piece.n):
                key, raw = cache.sample(piece.stream, *index.locate(piece.stream, piece.position + i))
                generator = torch.Generator().manual_seed(mix_seed(self.seed, piece.stream, piece.position + i))
                samples.append(self.transform(self.source.decode(raw), generator))
                rows.append(piece.row + i)
        n_global, n_local = len(samples[0]["global_crops"]), len(samples[0]["local_crops"])
        global_crops = torch.stack([torch.stack([s["global_crops"][c] for s in samples]) for c in range(n_global)])
        if n_local:
            local_crops = torch.stack([torch.stack([s["local_crops"][c] for s in samples]) for c in range(n_local)])
        else:
            local_crops = global_crops.new_zeros((0, len(samples), *global_crops.shape[2:]))
        g = self.schedule.global_batch
        masks = self.collate.masks_for_rows(
            [c * g + r for c in range(n_global) for r in rows], n_global * g, self.collate.grid_of(global_crops),
            mix_seed(self.seed, step, _MASKS),
        )
        return {
            "step": step,
            "group": group,
            "global_crops": global_crops,
            "local_crops": local_crops,
            "masks": masks.view(n_global, len(samples), -1),
        }


class GlobalBatchLoader:
    """This process's rows of every global batch, collated, from ``step`` on.

    ``batch_size`` is per process (the global batch is ``batch_size * world_size``). ``state`` is
    a :meth:`state_dict` saved at ``step`` (by any number of processes); without one the streams
    are taken to have run at this global batch since step 0. The rows are read in up to
    ``num_workers`` groups, one per DataLoader worker. ``order`` is ``data.order`` ('global' reads a
    random-access source as one permutation of all its samples per epoch, 'shards' shard by shard).
    """

    def __init__(
        self,
        source: Source,
        transform: SampleTransform,
        collate: MultiCropCollator,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        *,
        streams: int = 8,
        step: int = 0,
        state: dict | None = None,
        order: str = "shards",
    ) -> None:
        reads_whole(source, order)  # an unknown order is refused here, before any worker starts
        positions = None
        if state is not None:
            if state.get("streams") != streams:
                raise ValueError(
                    f"the checkpoint's data was read as data.streams={state.get('streams')}, this run has "
                    f"data.streams={streams}; the sample order cannot continue. Set data.streams back, "
                    "or train into a new run"
                )
            if int(state["step"]) != step:
                raise ValueError(f"data position saved at step {state['step']}, resuming at step {step}")
            positions = tuple(int(p) for p in state["positions"])
        origin = step if positions is not None else 0
        self.schedule = StreamSchedule(batch_size * world_size, streams, origin, positions)
        self._args = dict(source=source, seed=seed, rank=rank, world_size=world_size, num_workers=num_workers,
                          streams=streams, order=order)
        self.collate, self.step = collate, step
        n_groups = max(1, min(num_workers, batch_size))
        bounds = [rank * batch_size + (batch_size * i) // n_groups for i in range(n_groups + 1)]
        self.n_groups = n_groups
        dataset = GlobalBatchParts(
            source, transform, collate, seed, self.schedule, list(zip(bounds[:-1], bounds[1:])), step, order
        )
        self.loader = batch_loader(dataset, num_workers, seed, rank)
        self._iter: Iterator | None = None

    @property
    def global_batch(self) -> int:
        return self.schedule.global_batch

    def __iter__(self) -> "GlobalBatchLoader":
        return self

    def __next__(self) -> dict:
        if self._iter is None:
            self._iter = iter(self.loader)
        parts = [next(self._iter) for _ in range(self.n_groups)]
        if [(p["step"], p["group"]) for p in parts] != [(self.step, g) for g in range(self.n_groups)]:
            raise RuntimeError(f"data parts out of order at step {self.step}")
        self.step += 1
        return self._assemble(parts)

    def _assemble(self, parts: list[dict]) -> dict:
        global_crops = torch.cat([p["global_crops"] for p in parts], dim=1)
        local_crops = torch.cat([p["local_crops"] for p in parts], dim=1)
        masks = torch.cat([p["masks"] for p in parts], dim=1)
        n_global, rows = global_crops.shape[:2]
        grid = self.collate.grid_of(global_crops)
        upperbound = self.collate.upperbound_for_rows(n_global * rows, n_global * self.global_batch, grid)
        global_crops, local_crops = global_crops.flatten(0, 1), local_crops.flatten(0, 1)
        if self.collate.dtype is not None:
            global_crops, local_crops = global_crops.to(self.collate.dtype), local_crops.to(self.collate.dtype)
        return self.collate.finish(global_crops, local_crops, masks.flatten(0, 1), upperbound)

    def close(self) -> None:
        stop_loader_workers(self._iter)
        self._iter = None

    def state_dict(self) -> dict:
        """Plain JSON, the same on every process: streams, next step, next position of each stream."""
        return {"streams": self.schedule.streams, "global_batch": self.global_batch, "step": self.step,
                "positions": self.schedule.stream_positions(self.step)}

    def resized(
        self, transform: SampleTransform, collate: MultiCropCollator, batch_size: int
    ) -> "GlobalBatchLoader":
        """A loader that continues every stream where it stands with another augmentation and
        batch size (a new training phase); this one's workers are stopped, prefetched parts dropped."""
        self.close()
        return GlobalBatchLoader(
            transform=transform, collate=collate, batch_size=batch_size, step=self.step, state=self.state_dict(),
            **self._args,
        )

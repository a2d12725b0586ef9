"""Training data: the sources of images and the seeded order in which they are read.

Every source is a list of *shards* (committed WebDataset tars of curate-lvd, chunks of an image
folder, chunks of Fashion-MNIST). Each epoch permutes the shards and, within each shard, the
samples, both from (seed, epoch, shard), so the order is a pure function of the seed. A source
that reads any one sample cheaply (an image folder, Fashion-MNIST: ``random_access``) can instead
be read as one shard holding everything (``data.order='global'``), so every epoch is a
permutation of the whole source: a folder stored class by class then still gives batches of
every class. Only indices are permuted; the images are read when a batch needs them. The order
is split over slots (the data streams of :mod:`tasks.train.global_batches`): shards are dealt round-robin to slots when
there are enough of them, otherwise each slot takes every n-th sample of every shard.

Training (pretraining and distillation alike) reads its batches through
:mod:`tasks.train.global_batches`, which builds on the sources and :func:`plan_epoch` here so that
a step's global batch does not depend on the number of processes.
"""

from __future__ import annotations

import abc

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

SampleTransform = Callable[[Image.Image, torch.Generator], Any]

_CHUNK = 1000  # samples per virtual shard of in-memory and folder sources


# ---- sources --------------------------------------------------------------------------------


class Source(abc.ABC):
    """A list of shards, each readable as a list of ``(key, PIL image)`` in file order."""

    name: str = "source"
    random_access: bool = False  # read_sample(i) reads sample i of the whole source without its shard


    @abc.abstractmethod
    def shard_sizes(self) -> list[int]:
        """Samples per shard, in shard order."""

    @abc.abstractmethod
    def read_shard(self, index: int) -> list[tuple[str, Any]]:
        """Raw samples (not yet decoded) of shard ``index``."""

    @abc.abstractmethod
    def decode(self, raw: Any) -> Image.Image:
        """One raw sample as an RGB picture."""

    def __len__(self) -> int:
        return sum(self.shard_sizes())

    def read_sample(self, index: int) -> tuple[str, Any]:
        """Raw sample ``index`` of the whole source (shards in order), for ``random_access`` sources."""
        raise NotImplementedError(f"{type(self).__name__} reads whole shards only")


class ShardsSource(Source):
    """Committed curate-lvd shards: ``{stage}/manifest.parquet`` lists tar URLs (file:// or s3://)."""

    name = "shards"

    def __init__(self, stage_uri: str, verify: bool = False) -> None:
        from storage.commit import require_committed
        from storage.shards import manifest_shards

        stage_uri = resolve_latest(stage_uri)
        require_committed(stage_uri)
        self.stage_uri = stage_uri
        self.shards = [s for s in manifest_shards(stage_uri) if s.nsamples > 0]
        if not self.shards:
            raise ValueError(f"{stage_uri}: the manifest lists no samples")
        self.verify = verify

    def shard_sizes(self) -> list[int]:
        return [s.nsamples for s in self.shards]

    def read_shard(self, index: int) -> list[tuple[str, Any]]:
        from storage.shards import iter_samples

        info = self.shards[index]
        out = []
        for key, fields in iter_samples(info.url, expected_sha256=info.sha256 if self.verify else None):
            image = next((fields[e] for e in ("jpg", "jpeg", "png", "webp") if e in fields), None)
            if image is not None:
                out.append((key, image))
        return out

    def decode(self, raw: bytes) -> Image.Image:
        with Image.open(io.BytesIO(raw)) as im:
            return im.convert("RGB")


class ImageFolderSource(Source):
    """Every image file below a local directory, in sorted order, chunked into virtual shards."""

    name = "image_folder"
    random_access = True

    def __init__(self, root: str) -> None:
        from tasks.datasets.image_folder import list_images

        self.root = root.removeprefix("file://")
        self.files = list_images(self.root)

    def shard_sizes(self) -> list[int]:
        return _chunk_sizes(len(self.files))

    def read_shard(self, index: int) -> list[tuple[str, Any]]:
        names = self.files[index * _CHUNK : (index + 1) * _CHUNK]
        return [(n, f"{self.root}/{n}") for n in names]

    def read_sample(self, index: int) -> tuple[str, Any]:
        name = self.files[index]
        return name, f"{self.root}/{name}"

    def decode(self, raw: str) -> Image.Image:
        with Image.open(raw) as im:
            return im.convert("RGB")


class FashionMnistSource(Source):
    """The Fashion-MNIST train split (60k 28x28 grayscale), labels ignored."""

    name = "fashion_mnist"
    random_access = True

    def __init__(self, split: str = "train", limit: int | None = None) -> None:
        from tasks.datasets import fashion_mnist

        data = fashion_mnist.load(split)
        self.images = data.images if limit is None else data.images[:limit]

    def shard_sizes(self) -> list[int]:
        return _chunk_sizes(len(self.images))

    def read_shard(self, index: int) -> list[tuple[str, Any]]:
        start = index * _CHUNK
        return [(str(start + i), img) for i, img in enumerate(self.images[start : start + _CHUNK])]

    def read_sample(self, index: int) -> tuple[str, Any]:
        return str(index), self.images[index]

    def decode(self, raw: np.ndarray) -> Image.Image:
        return Image.fromarray(raw, mode="L").convert("RGB")


def resolve_latest(stage_uri: str) -> str:
    """``{root}/{dataset}/latest/shards`` -> the shards of the version ``latest`` names."""
    head, sep, tail = stage_uri.rstrip("/").rpartition("/latest/")
    if not sep or "/" in tail:
        return stage_uri
    from storage.commit import read_latest
    from storage.uri import basename, join, parent

    return join(head, read_latest(parent(head), basename(head)), tail)


def _chunk_sizes(n: int) -> list[int]:
    return [min(_CHUNK, n - s) for s in range(0, n, _CHUNK)]


def open_source(uri: str, kind: str = "auto") -> Source:
    """The source named by a URI: ``fashion-mnist[:test]``, an image folder, or a shards stage."""
    if not uri.startswith("fashion-mnist"):
        uri = resolve_latest(uri)
    if kind == "auto":
        if uri.startswith("fashion-mnist"):
            kind = "fashion_mnist"
        elif uri.startswith("s3://") or _has_manifest(uri):
            kind = "shards"
        else:
            kind = "image_folder"
    if kind == "fashion_mnist":
        split = uri.split(":", 1)[1] if ":" in uri else "train"
        return FashionMnistSource(split)
    if kind == "shards":
        return ShardsSource(uri)
    if kind == "image_folder":
        return ImageFolderSource(uri)
    raise ValueError(f"unknown data source kind {kind!r}")


def _has_manifest(uri: str) -> bool:
    from storage.shards import MANIFEST_FILE
    from storage.uri import exists, join

    return exists(join(uri, MANIFEST_FILE))


# ---- order ----------------------------------------------------------------------------------


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (SplitMix64 steps), stable across processes."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def _perm(n: int, *seed: int) -> np.ndarray:
    return np.random.default_rng(mix_seed(*seed)).permutation(n)


@dataclass(frozen=True)
class SlotPlan:
    """One epoch of one slot: (shard id, sample indices in that shard) in reading order."""

    shards: list[tuple[int, np.ndarray]]


def plan_epoch(sizes: Sequence[int], seed: int, epoch: int, slot: int, n_slots: int, shuffle: bool = True) -> SlotPlan:
    """Which samples ``slot`` reads in ``epoch``, in order (disjoint over slots, covering all)."""
    order = _perm(len(sizes), seed, epoch, -1) if shuffle else np.arange(len(sizes))
    plan = []
    if len(sizes) >= n_slots:
        for sid in order[slot::n_slots]:
            idx = _perm(sizes[sid], seed, epoch, sid) if shuffle else np.arange(sizes[sid])
            plan.append((int(sid), idx))
    else:
        # Too few shards to deal out: every slot reads every shard, taking every n-th sample of a
        # running count, so slots stay disjoint and balanced.
        count = 0
        for sid in order:
            idx = _perm(sizes[sid], seed, epoch, sid) if shuffle else np.arange(sizes[sid])
            take = (np.arange(count, count + len(idx)) % n_slots) == slot
            count += len(idx)
            if take.any():
                plan.append((int(sid), idx[take]))
    return SlotPlan(plan)


# ---- batches --------------------------------------------------------------------------------


def batch_loader(dataset: IterableDataset, num_workers: int, seed: int, rank: int) -> DataLoader:
    """A DataLoader over a dataset that yields whole batches, with its own seed generator: drawing
    the workers' base seed must not consume the global RNG (stochastic depth draws from it, and a
    resumed run restores it exactly)."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
        generator=torch.Generator().manual_seed(mix_seed(seed, rank)),
    )


def stop_loader_workers(iterator: Iterator | None) -> None:
    """Stop a DataLoader iterator's worker processes now, rather than at garbage collection
    (where a worker still mid-shard dies noisily)."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        try:
            shutdown()
        except RuntimeError:
            pass  # a worker stopped mid-prefetch at the end of a run: nothing it held is needed

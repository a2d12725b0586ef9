"""Decode and preprocess encoded images in DataLoader workers, keeping track of keys and failures.

Items come from a zero-argument factory (re-run in every worker); worker w handles items
w, w+W, w+2W, ... so no image is decoded twice, and the original order is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tasks.embed.backbone import Embedder
from tasks.embed.preprocess import Preprocess

ItemFactory = Callable[[], Iterable[tuple[str, bytes]]]


class EncodedImages(IterableDataset):
    """Yields ``(position, key, tensor, ok)``; an undecodable image yields ``ok=False`` and zeros."""

    def __init__(self, items: ItemFactory, preprocess: Preprocess) -> None:
        self.items = items
        self.preprocess = preprocess
        channels = 1 if preprocess.grayscale else 3
        self._blank_shape = (channels, preprocess.crop_size, preprocess.crop_size)

    def __iter__(self) -> Iterator[tuple[int, str, torch.Tensor, bool]]:
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        for pos, (key, data) in enumerate(self.items()):
            if pos % nworkers != wid:
                continue
            try:
                yield pos, key, self.preprocess.from_bytes(data), True
            except Exception:  # any decoder failure marks the image bad, never the shard
                yield pos, key, torch.zeros(self._blank_shape), False


def embed_items(
    embedder: Embedder, items: ItemFactory, batch_size: int = 64, num_workers: int = 0
) -> tuple[list[str], np.ndarray, list[str]]:
    """Embed every decodable item -> (keys in input order, float32 (n, dim), keys that failed to decode)."""
    loader = DataLoader(
        EncodedImages(items, embedder.preprocess),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=embedder.device.type == "cuda",
        persistent_workers=False,
    )
    positions, keys, vectors, failed = [], [], [], []
    for pos, batch_keys, batch, ok in loader:
        ok = ok.bool()
        failed.extend(k for k, good in zip(batch_keys, ok.tolist()) if not good)
        if ok.any():
            idx = torch.nonzero(ok).flatten()
            vectors.append(embedder(batch[idx]).numpy())
            positions.extend(pos[idx].tolist())
            keys.extend(batch_keys[i] for i in idx.tolist())
    if not vectors:
        return [], np.zeros((0, embedder.dim), np.float32), failed
    order = np.argsort(np.asarray(positions), kind="stable")
    return [keys[i] for i in order], np.concatenate(vectors)[order], failed

"""Reader for the Fashion-MNIST idx files (Debian ``dataset-fashion-mnist``).

Real labelled images that exist offline: the CPU training runs and the k-NN
evaluation both use them, so collapse shows up as a number rather than a guess.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ROOT_ENV = "LVD_FASHION_MNIST_ROOT"

CLASS_NAMES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class LabelledImages:
    """Images as uint8 [N, H, W] (grayscale) with int64 labels [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, n: int | None, seed: int = 0, balanced: bool = True) -> "LabelledImages":
        """The first ``n`` images of a seeded permutation (class-balanced when asked), for small evals."""
        if n is None or n >= len(self):
            return self
        rng = np.random.default_rng(seed)
        if not balanced:
            idx = np.sort(rng.permutation(len(self))[:n])
        else:
            classes = np.unique(self.labels)
            per_class = [rng.permutation(np.flatnonzero(self.labels == c)) for c in classes]
            take = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
            idx = np.sort(np.concatenate([p[:t] for p, t in zip(per_class, take)]))
        return LabelledImages(self.images[idx], self.labels[idx])


def root_dir(root: str | os.PathLike | None = None) -> Path:
    """The directory holding the idx files: argument, then ``$LVD_FASHION_MNIST_ROOT``, then Debian's path."""
    return Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def _open(path: Path):
    if path.exists():
        return open(path, "rb")
    gz = path.with_name(path.name + ".gz")
    if gz.exists():
        return gzip.open(gz, "rb")
    raise FileNotFoundError(
        f"Fashion-MNIST file {path.name}(.gz) not found in {path.parent}; "
        f"install Debian 'dataset-fashion-mnist' or set {ROOT_ENV}"
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (big-endian header: zero, zero, dtype code, ndim, then the dims)."""
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    with _open(path) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in dtypes:
        raise ValueError(f"{path}: not an idx file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {arr.size} values")
    return arr.reshape(dims)


def load(split: str = "train", root: str | os.PathLike | None = None) -> LabelledImages:
    """One split ("train": 60k, "test": 10k) as uint8 images [N, 28, 28] and int64 labels."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    base = root_dir(root)
    img_name, lab_name = _FILES[split]
    images = read_idx(base / img_name)
    labels = read_idx(base / lab_name).astype(np.int64)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"Fashion-MNIST {split}: images {images.shape} do not match labels {labels.shape}")
    return LabelledImages(np.ascontiguousarray(images), labels)

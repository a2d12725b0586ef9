import gzip
import struct

import numpy as np
import pytest
import torch

from tasks.datasets import fashion_mnist
from tasks.datasets.tensors import IMAGENET_MEAN, uint8_to_input


def _write_idx(path, arr, code):
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(arr.dtype.newbyteorder(">")).tobytes())


def test_reads_idx_written_here(tmp_path):
    imgs = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([2, 0, 9], dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs, 0x08)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 0x08)
    d = fashion_mnist.load("test", root=tmp_path)
    assert np.array_equal(d.images, imgs) and d.labels.tolist() == [2, 0, 9] and d.labels.dtype == np.int64


def test_truncated_file_is_refused(tmp_path):
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 10, 28, 28) + b"\0" * 100)
    with pytest.raises(ValueError, match="holds"):
        fashion_mnist.read_idx(tmp_path / "t10k-images-idx3-ubyte")


def test_missing_files_name_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fashion_mnist.load("train", root=tmp_path)


@pytest.mark.skipif(not (fashion_mnist.root_dir() / "t10k-labels-idx1-ubyte.gz").exists(), reason="package absent")
def test_real_test_split_and_balanced_subset():
    d = fashion_mnist.load("test")
    assert d.images.shape == (10000, 28, 28) and np.bincount(d.labels).tolist() == [1000] * 10
    s = d.subset(50, seed=3)
    assert len(s) == 50 and np.bincount(s.labels).tolist() == [5] * 10
    assert np.array_equal(s.labels, d.subset(50, seed=3).labels)


def test_uint8_to_input_shapes_and_normalisation():
    gray = np.zeros((2, 28, 28), dtype=np.uint8)
    x = uint8_to_input(gray, 56)
    assert x.shape == (2, 3, 56, 56)
    assert torch.allclose(x[0, 0], torch.full((56, 56), -IMAGENET_MEAN[0] / 0.229), atol=1e-5)
    rgb = np.full((1, 10, 10, 3), 255, dtype=np.uint8)
    assert uint8_to_input(rgb, 10).shape == (1, 3, 10, 10)

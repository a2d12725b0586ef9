"""PCA hash: sign bits of a PCA projection of each image's low-frequency DCT coefficients.

Features are the lowest ``block x block`` DCT-II coefficients of the 32x32 grayscale thumbnail
without the DC term, scaled to unit norm (so brightness and contrast changes cancel). PCA is fit
on a training sample; each bit is one principal direction thresholded at its training median,
so every bit splits the sample in half and carries close to one bit of information. The model is a
small ``.npz`` stored with the stage (``{version}/dedup/pca_hash.npz``, identified by
:meth:`PcaHash.digest`, which every part and the commit record), so the codes of every shard come
from the same projection. Where the sample comes from (``tasks.dedup.stage.dedup_prepare``): a
refresh reuses the earlier version's file; ``dedup.hash_model`` names a file to use as is (e.g. the
first version's, so later versions code images alike); else ``dedup.hash_reference`` images (a
fixed sample: the pool's other images never move the codes) or, by default, a pool sample.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np

from tasks.dedup.phash import low_dct


def feature_block(bits: int) -> int:
    """DCT block side whose coefficients (minus DC) are at least as many as the code bits."""
    return max(16, math.ceil(math.sqrt(bits + 1)))


def dct_features(thumbs: np.ndarray, block: int) -> np.ndarray:
    """``(n, block*block - 1)`` float32 unit-norm low-frequency DCT features (DC dropped)."""
    low = low_dct(thumbs, block).reshape(len(thumbs), -1)[:, 1:]
    norm = np.linalg.norm(low, axis=1, keepdims=True)
    return (low / np.maximum(norm, 1e-9)).astype(np.float32)


@dataclass(frozen=True)
class PcaHash:
    """A trained PCA hash: ``mean`` (f,), ``components`` (bits, f) and per-bit ``thresholds``."""

    mean: np.ndarray
    components: np.ndarray
    thresholds: np.ndarray
    block: int

    @property
    def bits(self) -> int:
        return int(self.components.shape[0])

    def project(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) @ self.components.T

    def encode(self, thumbs: np.ndarray) -> np.ndarray:
        """``(n, bits/8)`` uint8 packed codes of ``(n, 32, 32)`` grayscale thumbnails."""
        proj = self.project(dct_features(thumbs, self.block))
        return np.packbits(proj > self.thresholds, axis=1)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, components=self.components, thresholds=self.thresholds,
                 block=np.int64(self.block))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "PcaHash":
        with np.load(io.BytesIO(data)) as z:
            return cls(z["mean"], z["components"], z["thresholds"], int(z["block"]))

    def digest(self) -> str:
        """sha256 of the model's arrays: parts record it so codes from another model are not mixed in."""
        h = hashlib.sha256()
        for a in (self.mean, self.components, self.thresholds, np.int64(self.block)):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def fit_pca_hash(thumbs: np.ndarray, bits: int) -> PcaHash:
    """Fit the projection on a training sample of ``(n, 32, 32)`` thumbnails (n >= bits + 1)."""
    if bits % 8:
        raise ValueError(f"PCA-hash bits must be a multiple of 8, got {bits}")
    if len(thumbs) <= bits:
        raise ValueError(f"training a {bits}-bit PCA hash needs more than {bits} images, got {len(thumbs)}")
    block = feature_block(bits)
    feats = dct_features(thumbs, block).astype(np.float64)
    mean = feats.mean(axis=0)
    centred = feats - mean
    cov = centred.T @ centred / max(1, len(feats) - 1)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][:bits]
    components = eigvec[:, order].T
    # eigh leaves each vector's sign arbitrary; fix it so refits on the same data agree bit for bit.
    signs = np.sign(components[np.arange(bits), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    thresholds = np.median(centred @ components.T, axis=0)
    return PcaHash(mean.astype(np.float32), components.astype(np.float32), thresholds.astype(np.float32), block)

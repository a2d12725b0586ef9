"""Offline copy-detection descriptor: low-frequency DCT of luminance plus a coarse colour layout.

It needs no weights, so the copy-detection path runs anywhere (CI, air-gapped hosts) and gives a
measured baseline. It survives re-encoding, resizing, mild colour shifts, small overlays and
padding that keeps most of the frame; crops, flips and heavy framing defeat it. SSCD
(``tasks.dedup.sscd``) or a trained ViT replaces it when configured.

Layout: a 32x32 grayscale thumbnail (aspect squashed), the 96 lowest-frequency DCT-II
coefficients without DC (by radial frequency), each coefficient weighted by its radial frequency to flatten the 1/f
spectrum of natural images (so no single coefficient dominates), unit-normalised; and the mean
opponent colour (R-G, (R+G)/2-B) on a 4x4 grid, unit-normalised and down-weighted. The two parts
are concatenated and L2-normalised.

A grey image (``decode.is_grey``) has no colour layout: its colour part is zero. Its cosine with
a colour image is then at most ``1 / sqrt(1 + COLOUR_WEIGHT**2)`` (0.944), below the thresholds a
copy must pass, so the embedder names its colour dimensions (``colour_dims``) and that cap
(``grey_pair_cap``): :class:`tasks.dedup.knn.GreyAwareIndex` divides the scores of grey/colour
pairs by the cap, which makes them exactly the luminance cosine. A mirrored image's descriptor is
a signed permutation of the original's (:meth:`DctColourEmbedder.mirror`), so
:class:`tasks.dedup.knn.MirrorAwareIndex` scores a pair by the better of the image and its mirror
from the stored descriptors.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from tasks.dedup.decode import is_grey
from tasks.dedup.phash import gray_thumbnails, low_dct

DCT_BLOCK = 12
DCT_COEFFS = 96
COLOUR_GRID = 4
COLOUR_WEIGHT = 0.35
# Calibrated on the planted-duplicate set (benchmarks/RESULTS.md): precision-first operating points.
COPY_THRESHOLD = 0.80
EVAL_THRESHOLD = 0.75


def _lowest_frequencies(block: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the ``count`` lowest radial frequencies after DC, and their radii."""
    u = np.arange(block)[:, None]
    v = np.arange(block)[None, :]
    radius = np.sqrt(u * u + v * v).reshape(-1)
    order = np.lexsort((np.arange(block * block), radius))[1:count + 1]
    return order, radius[order]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


class DctColourEmbedder:
    """Callable: list of PIL images -> ``(n, dim)`` float32 L2-normalised descriptors."""

    model_id = "builtin:dct"
    min_side = 64
    copy_threshold = COPY_THRESHOLD
    eval_threshold = EVAL_THRESHOLD

    def __init__(self) -> None:
        self._coeffs, self._weights = _lowest_frequencies(DCT_BLOCK, DCT_COEFFS)
        self.dim = DCT_COEFFS + 2 * COLOUR_GRID * COLOUR_GRID
        self.colour_dims = (DCT_COEFFS, self.dim)
        # The mirror image's descriptor, as a signed permutation of this one: a horizontal flip
        # multiplies DCT coefficient (u, v) by (-1)^v and reverses the colour grid's columns.
        v = (self._coeffs % DCT_BLOCK).astype(np.int64)
        grid = np.arange(COLOUR_GRID * COLOUR_GRID).reshape(COLOUR_GRID, COLOUR_GRID)[:, ::-1].ravel()
        self._mirror_perm = np.concatenate([np.arange(DCT_COEFFS), DCT_COEFFS + grid,
                                            DCT_COEFFS + COLOUR_GRID * COLOUR_GRID + grid])
        self._mirror_sign = np.concatenate([np.where(v % 2, -1.0, 1.0), np.ones(2 * COLOUR_GRID * COLOUR_GRID)]
                                           ).astype(np.float32)
        self.grey_pair_cap = float(1.0 / np.sqrt(1.0 + COLOUR_WEIGHT ** 2))
        self.checksum = hashlib.sha256(
            f"{self.model_id}:{DCT_BLOCK}:{COLOUR_GRID}:{COLOUR_WEIGHT}:grey-zero".encode()
        ).hexdigest()

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        thumbs = gray_thumbnails(images)
        luma = low_dct(thumbs, DCT_BLOCK).reshape(len(images), -1)[:, self._coeffs] * self._weights
        colour = np.stack([np.zeros(2 * COLOUR_GRID * COLOUR_GRID, np.float32) if is_grey(img)
                           else self._colour_layout(img) for img in images])
        desc = np.concatenate([_unit(luma), COLOUR_WEIGHT * _unit(colour)], axis=1)
        return _unit(desc).astype(np.float32)

    def mirror(self, desc: np.ndarray) -> np.ndarray:
        """Descriptors of the mirrored images, computed from the descriptors alone (an orthogonal map
        that is its own inverse), so mirror-aware search needs no second pass over the images."""
        desc = np.asarray(desc)
        return (desc[:, self._mirror_perm] * self._mirror_sign).astype(desc.dtype, copy=False)

    @staticmethod
    def _colour_layout(img: Image.Image) -> np.ndarray:
        small = np.asarray(img.convert("RGB").resize((COLOUR_GRID, COLOUR_GRID), Image.BOX), dtype=np.float32)
        r, g, b = small[..., 0], small[..., 1], small[..., 2]
        return np.concatenate([(r - g).ravel(), ((r + g) / 2 - b).ravel()])

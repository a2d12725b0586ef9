"""Near-duplicate pairs among binary codes without comparing all pairs (multi-index hashing).

Identical codes are grouped first (a sort), so a million copies of one banner cost one entry
instead of a million-squared result. The distinct codes are then cut into ``radius + 1``
substrings: by the pigeonhole principle two codes within Hamming distance ``radius`` agree
exactly on at least one substring. For each substring the codes are sorted by it; the buckets
(runs of equal substring) are laid out as rows of a padded block, grouped by size (classes
1/8 apart, so padding adds little work), and all pairs inside each row are compared at once (full
popcount of the XOR), one column offset at a time. Everything is vectorised; the work is about
the sum of squared bucket sizes and memory O(n) per step. Only pairs within the radius are yielded.

Work per substring is about n x (mean bucket size) / 2; buckets hold n / 2^(substring bits) codes, so the
substrings should keep at least log2(n) bits: 64-bit codes suit radius <= 4 up to ~10M images,
and larger radii want 128 or 256 bits. ``bucket_cap`` bounds the work in a degenerate bucket (many codes
sharing a substring): it is cut into windows of ``bucket_cap`` codes, and pairs in different
windows are only found through another substring.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def popcount_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between rows of two equally shaped packed uint8 code arrays."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=1).sum(axis=1)


def identical_code_pairs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(unique_codes, first_index, inverse)``: each row's distinct code and its first holder."""
    unique, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    return unique, first, inverse.reshape(-1)


def substring_bounds(bits: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous bit ranges covering ``bits`` bits, sizes differing by at most one."""
    edges = np.linspace(0, bits, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _substring_keys(bitarray: np.ndarray, lo: int, hi: int) -> np.ndarray:
    weights = (np.uint64(1) << np.arange(hi - lo, dtype=np.uint64))[::-1]
    return bitarray[:, lo:hi].astype(np.uint64) @ weights


def _as_words(codes: np.ndarray) -> np.ndarray:
    """Packed codes as uint64 words (zero-padded to a multiple of 8 bytes) for fast popcounts."""
    n, nbytes = codes.shape
    pad = (-nbytes) % 8
    if pad:
        codes = np.concatenate([codes, np.zeros((n, pad), np.uint8)], axis=1)
    return np.ascontiguousarray(codes).view(np.uint64)


def hamming_neighbour_pairs(
    codes: np.ndarray, radius: int, bucket_cap: int = 1024
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(i, j, distance)`` arrays of row pairs (i < j, a pair may repeat) within ``radius`` bits.

    Rows with identical codes are linked to the first row holding that code (distance 0); distinct
    codes within the radius are linked directly.
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n, nbytes = codes.shape
    if n == 0:
        return
    unique, first, inverse = identical_code_pairs(codes)
    same = first[inverse] != np.arange(n)
    if same.any():
        rows = np.nonzero(same)[0]
        yield first[inverse[rows]], rows, np.zeros(len(rows), dtype=np.int32)
    bits = nbytes * 8
    if radius == 0 or len(unique) < 2:
        return
    if radius >= bits:
        raise ValueError(f"radius {radius} must be below the code length {bits}")
    words = _as_words(unique)
    bitarray = np.unpackbits(unique, axis=1)
    for lo, hi in substring_bounds(bits, radius + 1):
        keys = _substring_keys(bitarray, lo, hi)
        order = np.argsort(keys, kind="stable")
        sorted_words = words[order]
        win_start, win_size = bucket_windows(keys[order], bucket_cap)
        # Row widths grow by 1/8 per class, so padding adds at most ~27% work.
        width_class = np.ceil(np.log(win_size) / np.log(1.125)).astype(np.int64)
        for c in np.unique(width_class).tolist():
            chosen = width_class == c
            width = int(win_size[chosen].max())
            pos = win_start[chosen][:, None] + np.arange(width)[None, :]
            filled = np.arange(width)[None, :] < win_size[chosen][:, None]
            pos = np.where(filled, pos, win_start[chosen][:, None])
            block = sorted_words[pos]
            single = block.shape[2] == 1
            if single:
                block = block[:, :, 0]
            for offset in range(1, width):
                xor = np.bitwise_xor(block[:, :-offset], block[:, offset:])
                dist = np.bitwise_count(xor) if single else np.bitwise_count(xor).sum(axis=2)
                close = filled[:, offset:] & (dist <= radius)
                if close.any():
                    fa = first[order[pos[:, :-offset][close]]]
                    fb = first[order[pos[:, offset:][close]]]
                    yield np.minimum(fa, fb), np.maximum(fa, fb), dist[close].astype(np.int32)


def bucket_windows(sorted_keys: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """``(start, size)`` of every run of equal keys with 2+ members, runs longer than ``cap`` cut
    into windows of ``cap``: the blocks whose members are compared pairwise."""
    n = len(sorted_keys)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, n])
    nwin = -(-sizes // cap)
    first_win = np.cumsum(nwin) - nwin
    win_start = np.repeat(starts, nwin) + (np.arange(nwin.sum()) - np.repeat(first_win, nwin)) * cap
    win_size = np.minimum(cap, np.repeat(starts + sizes, nwin) - win_start)
    keep = win_size > 1
    return win_start[keep], win_size[keep]


def hamming_pairs_bruteforce(codes: np.ndarray, radius: int) -> set[tuple[int, int]]:
    """All row pairs (i < j) within the radius by comparing every pair: the reference for tests."""
    bits = np.unpackbits(codes, axis=1).astype(np.int16)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    i, j = np.nonzero(np.triu(dist <= radius, k=1))
    return set(zip(i.tolist(), j.tolist()))

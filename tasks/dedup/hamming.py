"""Near-duplicate pairs among binary codes without comparing all pairs.

Identical codes are grouped first (a sort), so a million copies of one banner cost one search
instead of a million-squared result. The distinct codes then go into a faiss multi-index hash
(``IndexBinaryMultiHash``): the code is cut into ``ntables`` substrings and every query probes
each table's buckets within ``nflip`` bit flips. By the pigeonhole principle two codes within
Hamming distance r agree to within ``floor(r / ntables)`` bits on at least one substring, so with
``nflip = floor(r / ntables)`` the candidates include every true neighbour, and only candidates
are compared. Each query keeps at most ``k`` neighbours, so memory is O(batch * k) per search
call plus the index (code bytes + 8 bytes id per distinct code).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import faiss
import numpy as np


def popcount_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between rows of two equally shaped packed uint8 code arrays."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=1).sum(axis=1)


def identical_code_pairs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(unique_codes, first_index, inverse)``: each row's distinct code and its first holder."""
    unique, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    return unique, first, inverse.reshape(-1)


def _table_layout(bits: int, radius: int, n: int) -> tuple[int, int, int]:
    """(tables, bits per table, flips per table) for an exact radius search over ``n`` codes.

    Picks the split with the fewest expected comparisons per query: buckets probed
    (tables x sum of C(table_bits, f) for f <= flips) times the codes expected per bucket.
    """
    best = None
    for ntables in range(1, bits // 8 + 1):
        if bits % ntables or bits // ntables > 32:
            continue
        table_bits = bits // ntables
        nflip = radius // ntables
        probes = ntables * sum(math.comb(table_bits, f) for f in range(nflip + 1))
        cost = probes * (1.0 + n / 2.0 ** table_bits)
        if best is None or cost < best[0]:
            best = (cost, ntables, table_bits, nflip)
    return best[1], best[2], best[3]


def hamming_neighbour_pairs(
    codes: np.ndarray, radius: int, k: int = 32, batch: int = 8192
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(i, j, distance)`` arrays of row pairs (i < j, a pair may repeat) within ``radius`` bits.

    Rows with identical codes are linked to the first row holding that code (distance 0); distinct
    codes are linked to up to ``k`` neighbours each. Together these connect every group that an
    all-pairs comparison would connect, as long as no code has more than ``k`` distinct neighbours
    within the radius.
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
    if radius == 0 or len(unique) < 2:
        return
    bits = nbytes * 8
    ntables, table_bits, nflip = _table_layout(bits, radius, len(unique))
    index = faiss.IndexBinaryMultiHash(bits, ntables, table_bits)
    index.nflip = nflip
    index.add(unique)
    kk = min(k + 1, len(unique))
    for start in range(0, len(unique), batch):
        q = unique[start:start + batch]
        dist, nbr = index.search(q, kk)
        qi = np.repeat(np.arange(start, start + len(q)), kk).reshape(len(q), kk)
        keep = (nbr >= 0) & (dist <= radius) & (nbr != qi)
        if keep.any():
            a = first[qi[keep]]
            b = first[nbr[keep]]
            yield np.minimum(a, b), np.maximum(a, b), dist[keep].astype(np.int32)


def hamming_pairs_bruteforce(codes: np.ndarray, radius: int) -> set[tuple[int, int]]:
    """All row pairs (i < j) within the radius by comparing every pair: the reference for tests."""
    bits = np.unpackbits(codes, axis=1).astype(np.int16)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    i, j = np.nonzero(np.triu(dist <= radius, k=1))
    return set(zip(i.tolist(), j.tolist()))

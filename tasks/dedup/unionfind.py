"""Connected components over streamed edge lists, vectorised, with O(n) memory.

A parent array (int64 per node) is the whole state; edges arrive in batches (from the Hamming
search, the k-NN graph, the sha256 groups) and are never stored. Every union points the larger
root at the smaller one, so roots are always the smallest index of their component and parent
pointers never form cycles; a batch is re-applied until all its endpoints share roots, which
settles the writes numpy drops when several edges target the same root.
"""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets over ``0..n-1`` with batch ``union`` and ``find``."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, x: np.ndarray) -> np.ndarray:
        """Roots of the nodes ``x``; compresses their paths on the way."""
        x = np.asarray(x, dtype=np.int64)
        root = self.parent[x]
        while True:
            up = self.parent[root]
            moved = up != root
            if not moved.any():
                break
            root = np.where(moved, up, root)
        self.parent[x] = root
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the sets of ``a[i]`` and ``b[i]`` for every i."""
        a = np.asarray(a, dtype=np.int64).ravel()
        b = np.asarray(b, dtype=np.int64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"union needs equally long endpoint arrays, got {a.shape} and {b.shape}")
        while len(a):
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not differ.any():
                return
            a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
            lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
            # Several edges may name the same `hi`: one write wins, the rest retry next round.
            self.parent[hi] = lo

    def labels(self, chunk: int = 1 << 22) -> np.ndarray:
        """Component label of every node: the smallest index in its component."""
        out = np.empty(len(self.parent), dtype=np.int64)
        for start in range(0, len(out), chunk):
            out[start:start + chunk] = self.find(np.arange(start, min(len(out), start + chunk)))
        return out

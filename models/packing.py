"""Describe several crop batches packed into one token sequence.

A training step feeds the student 2 global crops (224 px -> 257 tokens) and 8 local crops
(98 px -> 50 tokens) per image. Instead of running every block twice, the tokens of all crops are
concatenated into one [T, D] tensor: LayerNorm, qkv, proj and the feed-forward then run once over
all T tokens, and attention is restricted to each image's own tokens (block-diagonal attention).

A `Packing` records how the rows of that tensor are laid out: a sequence of groups, each group
being `batch` images of `seqlen` tokens stored image after image. Because every group holds
same-length sequences, block-diagonal attention within a group is ordinary batched attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Packing:
    """Layout of a packed [T, D] token tensor: `groups[i] = (batch, seqlen)`, in storage order."""

    groups: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("a packing needs at least one group")
        for b, n in self.groups:
            if b < 1 or n < 1:
                raise ValueError(f"group sizes must be positive, got (batch={b}, seqlen={n})")

    @classmethod
    def of(cls, tensors: list[Tensor] | tuple[Tensor, ...]) -> Packing:
        """Packing of a list of [B_i, N_i, D] tensors concatenated in order."""
        return cls(tuple((int(t.shape[0]), int(t.shape[1])) for t in tensors))

    @property
    def num_tokens(self) -> int:
        return sum(b * n for b, n in self.groups)

    @property
    def group_sizes(self) -> list[int]:
        """Number of rows each group occupies in the packed tensor."""
        return [b * n for b, n in self.groups]

    def seqlens(self) -> list[int]:
        """Length of every individual sequence, in storage order (what varlen kernels take)."""
        return [n for b, n in self.groups for _ in range(b)]

    def pack(self, tensors: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        """[B_i, N_i, D] tensors -> one [T, D] tensor."""
        if Packing.of(tensors) != self:
            raise ValueError(f"tensors of shapes {[tuple(t.shape) for t in tensors]} do not match {self}")
        flat = [t.reshape(-1, t.shape[-1]) for t in tensors]
        return flat[0] if len(flat) == 1 else torch.cat(flat, dim=0)

    def unpack(self, x: Tensor) -> list[Tensor]:
        """[T, ...] -> list of [B_i, N_i, ...] views (no copy)."""
        if x.shape[0] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} packed rows, got {x.shape[0]}")
        parts = x.split(self.group_sizes, dim=0)
        return [p.view(b, n, *x.shape[1:]) for p, (b, n) in zip(parts, self.groups)]

    def per_sample_to_tokens(self, values: Tensor) -> Tensor:
        """Repeat one value per sequence (shape [num_sequences]) onto each of its tokens."""
        lengths = torch.tensor(self.seqlens(), device=values.device)
        return values.repeat_interleave(lengths, dim=0)

    def sample_subset(self, keep_fraction: float, device: torch.device | None = None) -> tuple[Packing, Tensor, Tensor]:
        """Draw `max(int(B * keep_fraction), 1)` random sequences from every group.

        Returns the packing of the subset, the row indices of its tokens in this packing, and a
        per-row scale `B / kept` of the group the row belongs to. Scaling the subset's residual
        by it keeps the update unbiased, since every sequence is kept with probability kept / B.
        """
        indices, scales, groups = [], [], []
        start = 0
        for b, n in self.groups:
            kept = max(int(b * keep_fraction), 1)
            chosen = torch.randperm(b, device=device)[:kept]
            rows = start + chosen[:, None] * n + torch.arange(n, device=device)
            indices.append(rows.reshape(-1))
            scales.append(torch.full((kept * n,), b / kept, device=device))
            groups.append((kept, n))
            start += b * n
        return Packing(tuple(groups)), torch.cat(indices), torch.cat(scales)

"""iBOT block masking: which patch tokens of the student's global crops are replaced by the mask token.

Masks are unions of random rectangles (BEiT/iBOT style) rather than scattered patches, so the
student must predict whole regions from context. ``MaskingGenerator`` draws one mask with up to a
target number of patches; ``batch_masks`` applies the per-batch policy of the official collate:
half of the images are masked, with ratios stratified evenly over [0.1, 0.5]. ``masks_for_rows``
draws the same policy row by row, so processes that split a batch can each draw their own rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _uniform(a: float, b: float, generator: torch.Generator | None) -> float:
    return a + (b - a) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Integer in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


class MaskingGenerator:
    """Random-rectangle masks on a ``(height, width)`` patch grid.

    Each rectangle has an area drawn in [min_num_patches, remaining budget] (the budget is capped at
    ``max_num_patches`` per rectangle) and a log-uniform aspect ratio in [min_aspect, max_aspect];
    it must add at least one new patch and no more than the budget. Rectangles are added until
    the target count is reached or ``max_tries`` placements in a row fail, so a mask holds at
    most the target number of patches.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        max_num_patches: float | None = None,
        min_num_patches: int = 4,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        max_tries: int = 10,
    ) -> None:
        self.height, self.width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.num_patches = self.height * self.width
        self.max_num_patches = 0.5 * self.num_patches if max_num_patches is None else max_num_patches
        self.min_num_patches = min_num_patches
        max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        self.max_tries = max_tries

    def _add_rectangle(self, mask: torch.Tensor, budget: float, generator: torch.Generator | None) -> int:
        for _ in range(self.max_tries):
            area = _uniform(self.min_num_patches, budget, generator)
            aspect = math.exp(_uniform(*self.log_aspect, generator))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w >= self.width or h >= self.height:
                continue
            top = _randint(0, self.height - h, generator)
            left = _randint(0, self.width - w, generator)
            window = mask[top : top + h, left : left + w]
            new = h * w - int(window.sum())
            if 0 < new <= budget:
                window.fill_(True)
                return new
        return 0

    def __call__(self, num_masking_patches: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A (height, width) bool mask with at most ``num_masking_patches`` True entries."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            added = self._add_rectangle(mask, budget, generator)
            if added == 0:
                break
            count += added
        return mask


def batch_masks(
    n_images: int,
    mask_generator: MaskingGenerator,
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """Masks for a batch of ``n_images`` global crops: (masks (n_images, N) bool, upperbound).

    ``int(n_images * mask_probability)`` images are masked; image i of them targets
    ``int(N * U(r_i, r_{i+1}))`` patches, with r the evenly spaced edges of ``mask_ratio``, so
    ratios are spread over the whole range in every batch. The others stay unmasked, and the
    order is shuffled. ``upperbound`` = sum_i int(N * r_{i+1}) bounds the masked total and depends
    only on ``n_images``: the fixed buffer size that keeps head-input shapes static.
    """
    n_patches = mask_generator.num_patches
    n_masked = int(n_images * mask_probability)
    lo, hi = mask_ratio
    edges = [lo + (hi - lo) * i / n_masked for i in range(n_masked + 1)] if n_masked else [lo]
    masks: list[torch.Tensor] = []
    upperbound = 0
    for i in range(n_masked):
        target = int(n_patches * _uniform(edges[i], edges[i + 1], generator))
        masks.append(mask_generator(target, generator).flatten())
        upperbound += int(n_patches * edges[i + 1])
    masks += [torch.zeros(n_patches, dtype=torch.bool) for _ in range(n_images - n_masked)]
    order = torch.randperm(n_images, generator=generator)
    return torch.stack([masks[i] for i in order.tolist()]), upperbound


def _row_seed(seed: int, row: int) -> int:
    """A generator seed for one row of a batch, decorrelated from its neighbours' (SplitMix64 step)."""
    x = (seed * 0x9E3779B97F4A7C15 + row + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


def masks_for_rows(
    rows: Sequence[int],
    n_images: int,
    mask_generator: MaskingGenerator,
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    seed: int = 0,
) -> torch.Tensor:
    """Masks (len(rows), N) of some ``rows`` of a batch of ``n_images`` global crops.

    The policy of :func:`batch_masks` over the whole batch (``int(n_images * p)`` images masked,
    their ratios stratified over ``mask_ratio``), drawn so that any subset of rows can be drawn
    on its own: one permutation from ``seed`` deals the strata to rows, and each row's mask comes
    from its own generator. Processes that each hold a slice of a batch thus draw the slices of
    the very masks one process would draw for the whole batch.
    """
    n_patches = mask_generator.num_patches
    n_masked = int(n_images * mask_probability)
    lo, hi = mask_ratio
    edges = [lo + (hi - lo) * i / n_masked for i in range(n_masked + 1)] if n_masked else [lo]
    stratum = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    out = torch.zeros(len(rows), n_patches, dtype=torch.bool)
    for i, row in enumerate(rows):
        if not 0 <= row < n_images:
            raise IndexError(f"row {row} outside a batch of {n_images} images")
        s = int(stratum[row])
        if s < n_masked:
            g = torch.Generator().manual_seed(_row_seed(seed, row))
            target = int(n_patches * _uniform(edges[s], edges[s + 1], g))
            out[i] = mask_generator(target, g).flatten()
    return out


def masked_patches_bound(n_rows: int, n_images: int, n_patches: int, mask_ratio: tuple[float, float],
                         mask_probability: float) -> int:
    """A bound on the masked patches of ``n_rows`` rows of a batch of ``n_images`` (see
    :func:`masks_for_rows`) that depends only on those counts: a static buffer size."""
    return min(n_rows, int(n_images * mask_probability)) * int(n_patches * mask_ratio[1])

"""Collate multi-crop samples into the packed tensors one SSL training step consumes.

Crops are stacked crop-major (all images' crop 1, then all images' crop 2, ...), which is what
the losses' chunking expects. iBOT masks are drawn here, per batch, together with the index and
weight tensors the masked-patch loss needs and the static ``upperbound`` buffer size.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from models.masking import MaskingGenerator, batch_masks, masked_patches_bound, masks_for_rows


class MultiCropCollator:
    """``collate(samples) -> dict`` for a DataLoader; a sample is the augmentation's output
    ``{"global_crops": [...], "local_crops": [...]}`` or a ``(that dict, label)`` pair.

    Returned keys: ``collated_global_crops`` (G*B,3,H,W), ``collated_local_crops`` (L*B,3,h,w),
    ``collated_masks`` (G*B, N) bool over the patch grid of a global crop, ``mask_indices_list``
    (flat indices of masked patches into the (G*B*N) token list), ``masks_weight`` (1/masked count
    of the patch's image, one per masked patch), ``n_masked_patches`` (shape (1,) long),
    ``upperbound`` (int, >= n_masked_patches, fixed for a given batch size).
    """

    def __init__(
        self,
        patch_size: int = 14,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        min_num_patches: int = 4,
        max_mask_fraction: float = 0.5,
        min_aspect: float = 0.3,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.mask_probability = mask_probability
        self.min_num_patches = min_num_patches
        self.max_mask_fraction = max_mask_fraction
        self.min_aspect = min_aspect
        self.dtype = dtype
        self._generators: dict[tuple[int, int], MaskingGenerator] = {}

    def mask_generator(self, grid: tuple[int, int]) -> MaskingGenerator:
        if grid not in self._generators:
            self._generators[grid] = MaskingGenerator(
                grid,
                max_num_patches=self.max_mask_fraction * grid[0] * grid[1],
                min_num_patches=self.min_num_patches,
                min_aspect=self.min_aspect,
            )
        return self._generators[grid]

    def __call__(
        self, samples: Sequence[Mapping[str, Any] | tuple], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        crops = [s[0] if isinstance(s, (tuple, list)) else s for s in samples]
        n_global = len(crops[0]["global_crops"])
        n_local = len(crops[0]["local_crops"])
        global_crops = torch.stack([c["global_crops"][i] for i in range(n_global) for c in crops])
        if n_local:
            local_crops = torch.stack([c["local_crops"][i] for i in range(n_local) for c in crops])
        else:
            local_crops = global_crops.new_zeros((0, *global_crops.shape[1:]))
        if self.dtype is not None:
            global_crops, local_crops = global_crops.to(self.dtype), local_crops.to(self.dtype)

        masks, upperbound = batch_masks(
            len(global_crops), self.mask_generator(self.grid_of(global_crops)), self.mask_ratio,
            self.mask_probability, generator,
        )
        return self.finish(global_crops, local_crops, masks, upperbound)

    def grid_of(self, global_crops: torch.Tensor) -> tuple[int, int]:
        """The patch grid of crops shaped (..., H, W)."""
        height, width = global_crops.shape[-2:]
        return height // self.patch_size, width // self.patch_size

    def masks_for_rows(self, rows: Sequence[int], n_images: int, grid: tuple[int, int], seed: int) -> torch.Tensor:
        """Masks of some rows of a batch of ``n_images`` global crops (``models.masking.masks_for_rows``)."""
        return masks_for_rows(rows, n_images, self.mask_generator(grid), self.mask_ratio, self.mask_probability, seed)

    def upperbound_for_rows(self, n_rows: int, n_images: int, grid: tuple[int, int]) -> int:
        """Static bound on the masked patches of ``n_rows`` rows drawn by :meth:`masks_for_rows`."""
        return masked_patches_bound(n_rows, n_images, grid[0] * grid[1], self.mask_ratio, self.mask_probability)

    def finish(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor, masks: torch.Tensor, upperbound: int
    ) -> dict[str, Any]:
        """The collated dict from crop-major crops and their masks (the masked-patch index tensors added)."""
        mask_indices = masks.flatten().nonzero().flatten()
        per_image = 1.0 / masks.sum(dim=-1).clamp(min=1).float()
        masks_weight = per_image.unsqueeze(-1).expand_as(masks)[masks]
        return {
            "collated_global_crops": global_crops,
            "collated_local_crops": local_crops,
            "collated_masks": masks,
            "mask_indices_list": mask_indices,
            "masks_weight": masks_weight,
            "n_masked_patches": torch.tensor([mask_indices.numel()], dtype=torch.long),
            "upperbound": upperbound,
        }

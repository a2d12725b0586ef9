"""Cut an image into non-overlapping patches and project each to the embedding width."""

from __future__ import annotations

from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H/p * W/p, D), patches in row-major order.

    A strided convolution with kernel = stride = patch size is exactly a linear layer applied
    to every flattened patch.
    """

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        return height // p, width // p

    def forward(self, x: Tensor) -> Tensor:
        self.grid_size(x.shape[-2], x.shape[-1])
        return self.proj(x).flatten(2).transpose(1, 2)

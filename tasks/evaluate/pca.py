"""Patch-feature PCA pictures, as in the DINOv2 paper's figure.

The patch features of a few images are pooled and their first principal component is
thresholded at 0: one side is foreground, the other background. The sign of a component is
arbitrary, so it is oriented to put most border patches in the background (objects rarely fill
the frame edge). A second PCA on the foreground patches alone gives three components, each
min-max scaled to [0, 1] and shown as RGB; background patches stay black. Parts that match
across images (heads, wheels, legs) then share a colour.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def _principal_axes(x: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` principal directions [D, k] of the rows of ``x`` (float64 SVD of the centred data)."""
    centred = x.double() - x.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:k].T


def foreground_masks(patch_sets: list[torch.Tensor], grids: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Patch tokens of several images ([h*w, D] each, grids may differ) -> foreground masks [h, w].

    The first principal component of all their patches, pooled, thresholded at 0 and oriented so
    that most border patches fall in the background."""
    for patches, (h, w) in zip(patch_sets, grids, strict=True):
        if patches.shape[0] != h * w:
            raise ValueError(f"{patches.shape[0]} patches do not form a {h}x{w} grid")
    flat = torch.cat([p.double() for p in patch_sets])
    first = ((flat - flat.mean(0)) @ _principal_axes(flat, 1)[:, 0]).split([p.shape[0] for p in patch_sets])
    maps = [f.reshape(h, w) for f, (h, w) in zip(first, grids)]
    border = torch.cat([torch.cat([m[0], m[-1], m[1:-1, 0], m[1:-1, -1]]) for m in maps])
    sign = -1.0 if (border > 0).double().mean() > 0.5 else 1.0
    return [sign * m > 0 for m in maps]


def foreground_and_rgb(patches: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch tokens [M, h*w, D] -> (foreground mask [M, h, w] bool, colours [M, h, w, 3] in [0, 1])."""
    m, p, d = patches.shape
    h, w = grid
    if h * w != p:
        raise ValueError(f"{p} patches do not form a {h}x{w} grid")
    flat = patches.reshape(-1, d).double()
    fg = torch.stack(foreground_masks(list(patches), [grid] * m))
    rgb = torch.zeros(m, h, w, 3, dtype=torch.float64)
    fg_rows = flat[fg.reshape(-1)]
    if fg_rows.shape[0] >= 2:
        k = min(3, fg_rows.shape[0] - 1, d)
        comps = (fg_rows - fg_rows.mean(0)) @ _principal_axes(fg_rows, k)
        lo, hi = comps.min(0).values, comps.max(0).values
        comps = (comps - lo) / (hi - lo).clamp_min(1e-12)
        colours = torch.zeros(fg_rows.shape[0], 3, dtype=torch.float64)
        colours[:, :k] = comps
        rgb.reshape(-1, 3)[fg.reshape(-1)] = colours
    return fg, rgb.float()


@torch.no_grad()
def pca_picture(backbone: torch.nn.Module, images: list[np.ndarray], inputs: torch.Tensor, tile: int = 160) -> bytes:
    """PNG: one row per image, the photo next to its patch-PCA colours (nearest-upsampled)."""
    backbone.eval()
    out = backbone.forward_features(inputs)
    grid = backbone.patch_embed.grid_size(*inputs.shape[-2:])
    _, rgb = foreground_and_rgb(out["x_norm_patchtokens"].float(), grid)
    sheet = Image.new("RGB", (2 * tile + 12, len(images) * (tile + 4) + 4), "white")
    for i, img in enumerate(images):
        y = 4 + i * (tile + 4)
        sheet.paste(Image.fromarray(img).convert("RGB").resize((tile, tile), Image.BICUBIC), (4, y))
        colours = Image.fromarray((rgb[i].numpy() * 255).round().astype(np.uint8))
        sheet.paste(colours.resize((tile, tile), Image.NEAREST), (tile + 8, y))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()

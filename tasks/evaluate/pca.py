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


def foreground_and_rgb(patches: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch tokens [M, h*w, D] -> (foreground mask [M, h, w] bool, colours [M, h, w, 3] in [0, 1])."""
    m, p, d = patches.shape
    h, w = grid
    if h * w != p:
        raise ValueError(f"{p} patches do not form a {h}x{w} grid")
    flat = patches.reshape(-1, d).double()
    first = (flat - flat.mean(0)) @ _principal_axes(flat, 1)[:, 0]
    first = first.reshape(m, h, w)
    border = torch.zeros(h, w, dtype=torch.bool)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    if (first[:, border] > 0).float().mean() > 0.5:
        first = -first
    fg = first > 0
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

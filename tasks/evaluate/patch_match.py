"""Patch matching between an image and an edited copy of it (the DINOv2 paper's Figure 10 kind).

Each photo gets planted copies whose geometry is known: ``flip`` (horizontal mirror), ``crop``
(a window of 3/4 of the side at offset (1/8, 1/16) of the side, resized back), ``rescale``
(downscaled to about 3/4 of the side, a whole number of patches) and ``identity`` (a sanity
row: any deterministic model matches every kept patch to itself). Every edit is an axis-aligned
affine map from the copy's pixel coordinates to the original's, so the true location of a
copy's patch centre in the original is known.

Matching follows the paper: the foreground patches of both images (first principal component of
their pooled patch features, thresholded at 0, see :func:`tasks.evaluate.pca.foreground_masks`),
then mutual nearest neighbours by cosine similarity between the two foreground sets. A match is
correct when the matched original patch centre lies within ``radius`` patches (Chebyshev distance,
in patch units) of the copy patch centre's true location. ``patch_match_<edit>`` is the share of
correct matches over all photos' matches of that edit; ``patch_matches_<edit>`` the mean number of
matches per pair (a model that matches almost nothing is not accurate, it is silent).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

EDITS = ("identity", "flip", "crop", "rescale")
CROP_SIDE, CROP_OFFSET = 0.75, (1 / 8, 1 / 16)  # crop window: side and (x, y) offset, as fractions of the side
RESCALE = 0.75


@dataclass(frozen=True)
class PlantedPair:
    """An original photo, its edited copy and the copy-to-original map ``x_o = ax * x_e + bx``."""

    edit: str
    original: np.ndarray  # uint8 [S, S, 3]
    copy: np.ndarray  # uint8 [h, w, 3]
    ax: float
    bx: float
    ay: float
    by: float

    def to_original(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.ax * x + self.bx, self.ay * y + self.by


def plant(photo: np.ndarray, edit: str, patch: int) -> PlantedPair:
    """The copy of a square ``photo`` made by ``edit``, sized a whole number of ``patch``es."""
    side = photo.shape[0]
    if photo.shape[1] != side or side % patch:
        raise ValueError(f"patch matching needs square photos whose side is a multiple of the patch size {patch}, "
                         f"got {photo.shape[1]}x{photo.shape[0]}")
    img = Image.fromarray(photo)
    if edit == "identity":
        return PlantedPair(edit, photo, photo.copy(), 1.0, 0.0, 1.0, 0.0)
    if edit == "flip":
        return PlantedPair(edit, photo, np.ascontiguousarray(photo[:, ::-1]), -1.0, float(side), 1.0, 0.0)
    if edit == "crop":
        c = round(CROP_SIDE * side)
        ox, oy = round(CROP_OFFSET[0] * side), round(CROP_OFFSET[1] * side)
        copy = np.asarray(img.crop((ox, oy, ox + c, oy + c)).resize((side, side), Image.BICUBIC))
        return PlantedPair(edit, photo, copy, c / side, float(ox), c / side, float(oy))
    if edit == "rescale":
        small = max(1, round(RESCALE * side / patch)) * patch
        copy = np.asarray(img.resize((small, small), Image.BICUBIC))
        return PlantedPair(edit, photo, copy, side / small, 0.0, side / small, 0.0)
    raise ValueError(f"unknown patch-matching edit {edit!r}; known: {', '.join(EDITS)}")


def mutual_nearest_neighbours(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Pairs [M, 2] of row indices (into ``fa``, into ``fb``) that are each other's cosine nearest neighbour."""
    if fa.shape[0] == 0 or fb.shape[0] == 0:
        return torch.zeros(0, 2, dtype=torch.long)
    sim = torch.nn.functional.normalize(fa.double(), dim=-1) @ torch.nn.functional.normalize(fb.double(), dim=-1).T
    a_to_b, b_to_a = sim.argmax(1), sim.argmax(0)
    a = torch.arange(fa.shape[0])
    keep = b_to_a[a_to_b] == a
    return torch.stack([a[keep], a_to_b[keep]], 1)


def patch_centres(grid: tuple[int, int], patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (x, y) of every patch centre of a ``grid`` (row-major, as the tokens)."""
    h, w = grid
    ys, xs = np.divmod(np.arange(h * w), w)
    return (xs + 0.5) * patch, (ys + 0.5) * patch


def match_errors(pair: PlantedPair, matches: np.ndarray, grid_a: tuple[int, int], grid_b: tuple[int, int],
                 patch: int) -> np.ndarray:
    """Per match (original token, copy token): distance in patches between the matched original patch
    centre and the copy patch centre's true location in the original (Chebyshev)."""
    xa, ya = patch_centres(grid_a, patch)
    xb, yb = patch_centres(grid_b, patch)
    ia, ib = matches[:, 0], matches[:, 1]
    tx, ty = pair.to_original(xb[ib], yb[ib])
    return np.maximum(np.abs(xa[ia] - tx), np.abs(ya[ia] - ty)) / patch


@dataclass
class PairMatch:
    pair: PlantedPair
    matches: np.ndarray  # [M, 2] (original token, copy token)
    errors: np.ndarray  # [M] in patches
    grid_a: tuple[int, int]
    grid_b: tuple[int, int]
    foreground: tuple[int, int]  # foreground patches kept in (original, copy)


@torch.no_grad()
def match_pair(backbone: torch.nn.Module, pair: PlantedPair, device: torch.device) -> PairMatch:
    """Foreground patches of both images, their mutual nearest neighbours and each match's error."""
    from tasks.datasets.tensors import uint8_to_input
    from tasks.evaluate.pca import foreground_masks

    patch = backbone.patch_embed.patch_size
    feats, grids = [], []
    for img in (pair.original, pair.copy):
        x = uint8_to_input(np.array(img[None]), img.shape[0]).to(device)
        feats.append(backbone.forward_features(x)["x_norm_patchtokens"][0].float().cpu())
        grids.append(backbone.patch_embed.grid_size(*img.shape[:2]))
    fg_a, fg_b = (m.reshape(-1) for m in foreground_masks(feats, grids))
    idx_a, idx_b = fg_a.nonzero()[:, 0], fg_b.nonzero()[:, 0]
    local = mutual_nearest_neighbours(feats[0][idx_a], feats[1][idx_b])
    matches = torch.stack([idx_a[local[:, 0]], idx_b[local[:, 1]]], 1).numpy() if len(local) else \
        np.zeros((0, 2), dtype=np.int64)
    errors = match_errors(pair, matches, grids[0], grids[1], patch)
    return PairMatch(pair, matches, errors, grids[0], grids[1], (int(fg_a.sum()), int(fg_b.sum())))


def accuracy_rows(results: list[PairMatch], radius: float) -> dict[str, float]:
    """``patch_match_<edit>`` (share of matches within ``radius`` patches; NaN with no match at all)
    and ``patch_matches_<edit>`` (mean matches per pair), per edit in first-seen order."""
    out: dict[str, float] = {}
    for edit in dict.fromkeys(r.pair.edit for r in results):
        mine = [r for r in results if r.pair.edit == edit]
        errors = np.concatenate([r.errors for r in mine])
        out[f"patch_match_{edit}"] = float((errors <= radius + 1e-9).mean()) if errors.size else math.nan
        out[f"patch_matches_{edit}"] = float(errors.size / len(mine))
    return out


def match_picture(results: list[PairMatch], radius: float, tile: int = 192, max_lines: int = 48) -> bytes:
    """PNG: one row per pair, original left and copy right, a line per match (green: within ``radius``
    patches of the true location, red: not); at most ``max_lines`` evenly chosen matches per pair."""
    gap = 16
    sheet = Image.new("RGB", (2 * tile + gap + 8, len(results) * (tile + 20) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for row, r in enumerate(results):
        y0 = 4 + row * (tile + 20)
        sa, sb = r.pair.original.shape[0], r.pair.copy.shape[0]
        xa0, xb0 = 4, 4 + tile + gap
        sheet.paste(Image.fromarray(r.pair.original).resize((tile, tile), Image.BICUBIC), (xa0, y0))
        sheet.paste(Image.fromarray(r.pair.copy).resize((tile, tile), Image.BICUBIC), (xb0, y0))
        good = int((r.errors <= radius + 1e-9).sum())
        draw.text((xa0, y0 + tile + 3), f"{r.pair.edit}: {good}/{len(r.errors)} within {radius:g} patch",
                  fill="black")
        if not len(r.matches):
            continue
        patch_a = sa / r.grid_a[1]
        patch_b = sb / r.grid_b[1]
        xa, ya = patch_centres(r.grid_a, 1)
        xb, yb = patch_centres(r.grid_b, 1)
        chosen = np.unique(np.linspace(0, len(r.matches) - 1, min(max_lines, len(r.matches))).round().astype(int))
        for k in chosen:
            ia, ib = r.matches[k]
            pa = (xa0 + xa[ia] * patch_a * tile / sa, y0 + ya[ia] * patch_a * tile / sa)
            pb = (xb0 + xb[ib] * patch_b * tile / sb, y0 + yb[ib] * patch_b * tile / sb)
            colour = (40, 200, 60) if r.errors[k] <= radius + 1e-9 else (230, 40, 40)
            draw.line([pa, pb], fill=colour, width=1)
            for p in (pa, pb):
                draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], outline=colour)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()

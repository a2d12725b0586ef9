"""Make face regions unrecognisable in place; everything outside them keeps its pixels.

The region blurred is the detected box grown by ``margin`` on every side (hair, ears and chin
are identifying too), clipped to the image. Strength scales with the region, so a large face
is blurred as hard as a small one.
"""

from __future__ import annotations

from PIL import Image, ImageFilter

from tasks.safety.faces import Box


def blur_region(box: Box, width: int, height: int, margin: float) -> Box:
    """``box`` grown by ``margin`` of its size on each side and clipped to the image."""
    x, y, w, h = box
    dx, dy = round(w * margin), round(h * margin)
    x0, y0 = max(0, x - dx), max(0, y - dy)
    x1, y1 = min(width, x + w + dx), min(height, y + h + dy)
    return (x0, y0, max(0, x1 - x0), max(0, y1 - y0))


def _blur_patch(patch: Image.Image, method: str, strength: float) -> Image.Image:
    side = min(patch.size)
    if method == "pixelate":
        block = max(2, round(side * strength))
        small = (max(1, round(patch.width / block)), max(1, round(patch.height / block)))
        return patch.resize(small, Image.Resampling.BOX).resize(patch.size, Image.Resampling.NEAREST)
    radius = max(2.0, side * strength)
    # blur twice: one Gaussian pass leaves edges readable at small radii relative to the face
    return patch.filter(ImageFilter.GaussianBlur(radius)).filter(ImageFilter.GaussianBlur(radius))


def blur_faces(
    img: Image.Image, boxes: list[Box], method: str, strength: float, margin: float
) -> tuple[Image.Image, list[Box]]:
    """A copy of ``img`` with every face region blurred, and the regions that were changed."""
    out = img.convert("RGB").copy()
    regions = []
    for box in boxes:
        region = blur_region(box, out.width, out.height, margin)
        x, y, w, h = region
        if w < 1 or h < 1:
            continue
        patch = out.crop((x, y, x + w, y + h))
        out.paste(_blur_patch(patch, method, strength), (x, y))
        regions.append(region)
    return out, regions

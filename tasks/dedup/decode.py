"""Decode image bytes once, at the smallest size the detectors need.

JPEG files decode at 1/2, 1/4 or 1/8 scale through ``Image.draft`` (the DCT is only partly
inverted), which is several times faster than a full decode followed by a resize. Undecodable
bytes come back as a reason string instead of an exception, so one corrupt image never stops a
shard.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from PIL import Image

# Decompression bombs are corrupt input for us, not something to wait on.
MAX_PIXELS = 16_000 * 16_000


def decode_rgb(data: bytes, min_side: int | None = None) -> tuple[Image.Image | None, str | None]:
    """``(RGB image, None)``, or ``(None, reason)`` if the bytes are not a readable image.

    With ``min_side``, JPEGs decode at the smallest DCT scale whose short side is still at least
    ``min_side`` (never smaller than asked, so later resizes only shrink).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                return None, f"too many pixels ({img.width}x{img.height})"
            if min_side is not None and img.format == "JPEG":
                short = min(img.width, img.height)
                scale = max(1.0, short / max(1, min_side))
                img.draft("RGB", (max(1, int(img.width / scale)), max(1, int(img.height / scale))))
            img.load()
        if img.mode != "RGB":
            img = _to_rgb(img)
        if img.width < 1 or img.height < 1:
            return None, "empty image"
        return img, None
    except Exception as exc:  # PIL raises many types for bad input; all mean "not decodable"
        return None, f"undecodable: {type(exc).__name__}: {str(exc)[:160]}"


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any mode; transparent pixels composite onto white, as browsers show them."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def trim_uniform_border(img: Image.Image, tol: int = 10, min_keep: float = 0.3) -> Image.Image:
    """``img`` without flat single-colour margins (letterboxing, padding), if they leave enough.

    A row or column is margin when its pixels stay within ``tol`` grey levels of the corner
    colour. Descriptors see the picture, not the frame, so padded copies match their originals
    and padded distinct photos stop matching each other. Nothing is cut if less than
    ``min_keep`` of either side would remain.
    """
    gray = np.asarray(img.convert("L"), dtype=np.int16)
    h, w = gray.shape
    if h < 8 or w < 8:
        return img
    corner = int(np.median([gray[0, 0], gray[0, -1], gray[-1, 0], gray[-1, -1]]))
    flat = np.abs(gray - corner) <= tol
    rows = np.nonzero(~flat.all(axis=1))[0]
    cols = np.nonzero(~flat.all(axis=0))[0]
    if len(rows) == 0 or len(cols) == 0:
        return img
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if (bottom - top) < min_keep * h or (right - left) < min_keep * w:
        return img
    if top == 0 and left == 0 and bottom == h and right == w:
        return img
    return img.crop((int(left), int(top), int(right), int(bottom)))


# Mean spread between an image's largest and smallest channel (grey levels, on a 32x32 box
# thumbnail) below which it counts as grey: JPEG chroma noise on a grey image stays near 1.
GREY_SPREAD = 4.0


def is_grey(img: Image.Image) -> bool:
    """Whether ``img`` is a grey image stored as colour (or a true greyscale image)."""
    if img.mode in ("L", "1", "I", "F", "LA"):
        return True
    small = np.asarray(img.convert("RGB").resize((32, 32), Image.BOX), dtype=np.int16)
    return float((small.max(axis=2) - small.min(axis=2)).mean()) < GREY_SPREAD

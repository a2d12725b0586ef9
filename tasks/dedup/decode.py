"""Decode image bytes once, at the smallest size the detectors need.

JPEG files decode at 1/2, 1/4 or 1/8 scale through ``Image.draft`` (the DCT is only partly
inverted), which is several times faster than a full decode followed by a resize. Undecodable
bytes come back as a reason string instead of an exception, so one corrupt image never stops a
shard.

Every image the detectors compare (pool images and evaluation images alike) goes through
:func:`decode_working`: decoded upright, then brought to one working size that depends only on the
picture's shape (longest side ``WORKING_SIDE``, short side at least the descriptor's ``min_side``),
never on the file's resolution. Draft decoding alone would not do: an 800-px evaluation photo
decodes at 1/8 scale (100 px) and its 512-px crawled copy at 1/4 (128 px), and the descriptors of
the two differ (cosine 0.93 on opencv's ``pca_test1.jpg`` with the builtin descriptor).
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from PIL import Image, ImageOps

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


# Longest side of the working image: JPEGs draft-decode at the smallest scale still covering it,
# then LANCZOS brings every image to exactly this size (small images are never enlarged).
WORKING_SIDE = 256


def working_size(width: int, height: int, min_side: int) -> tuple[int, int]:
    """Size of the working image for a ``width x height`` picture: longest side ``WORKING_SIDE``
    unless the short side would fall below ``min_side``; never larger than the picture."""
    scale = min(1.0, max(WORKING_SIDE / max(width, height), min_side / max(1, min(width, height))))
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_working(data: bytes, min_side: int = 64, full: bool = False
                   ) -> tuple[Image.Image | None, Image.Image | None, str | None]:
    """``(decoded, working, None)`` or ``(None, None, reason)``.

    ``working`` is the upright RGB picture at :func:`working_size`. ``decoded`` is the image it was
    made from: the full-resolution decode with ``full`` (what ``imagehash`` sees, for the pHash),
    else the draft decode.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                return None, None, f"too many pixels ({img.width}x{img.height})"
            upright = _upright_size(img)
            target = working_size(*upright, min_side)
            if not full and img.format == "JPEG":
                sx, sy = (target[1], target[0]) if upright != img.size else target
                img.draft("RGB", (sx, sy))
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # an unreadable orientation tag leaves the picture as stored
                pass
        if img.mode != "RGB":
            img = _to_rgb(img)
        if img.width < 1 or img.height < 1:
            return None, None, "empty image"
        work = img if img.size == target else img.resize(target, Image.LANCZOS, reducing_gap=3.0)
        return img, work, None
    except Exception as exc:  # PIL raises many types for bad input; all mean "not decodable"
        return None, None, f"undecodable: {type(exc).__name__}: {str(exc)[:160]}"


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """Picture size after its EXIF orientation is applied (the crawl stores images upright)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block leaves the picture as stored
        orientation = 1
    return (img.height, img.width) if orientation in (5, 6, 7, 8) else (img.width, img.height)


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

"""Decode, check and resize one downloaded image; runs in worker processes, so it is plain and picklable.

Every refusal is a (reason, detail) pair instead of an exception, so a hostile file costs one record,
never the worker or the part.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from tasks.crawl import reasons

ImageFile.LOAD_TRUNCATED_IMAGES = False

# Leading bytes of the formats Pillow decodes for us; anything else is refused before decoding.
_MAGIC: list[tuple[bytes, int, str]] = [
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
]
_KNOWN_UNSUPPORTED: list[tuple[bytes, int, str]] = [
    (b"ftypavif", 4, "image/avif"),
    (b"ftypheic", 4, "image/heic"),
    (b"ftypmif1", 4, "image/heif"),
    (b"<svg", 0, "image/svg+xml"),
    (b"<?xml", 0, "image/svg+xml"),
]


def sniff_mime(head: bytes) -> str | None:
    """MIME type from magic bytes (WEBP also needs the RIFF container), or None if not a supported image."""
    for magic, offset, mime in _MAGIC:
        if head[offset : offset + len(magic)] == magic and (mime != "image/webp" or head[:4] == b"RIFF"):
            return mime
    return None


def sniff_unsupported(head: bytes) -> str | None:
    stripped = head.lstrip()
    for magic, offset, mime in _KNOWN_UNSUPPORTED:
        if (stripped if offset == 0 else head)[offset : offset + len(magic)] == magic:
            return mime
    return None


@dataclass(frozen=True)
class ImageParams:
    """The subset of CrawlConfig a worker needs (small, so it pickles cheaply)."""

    max_pixels: int
    min_side: int
    max_aspect_ratio: float
    max_side: int
    jpeg_quality: int


@dataclass(frozen=True)
class Processed:
    jpeg: bytes
    sha256: str
    mime: str
    orig_width: int
    orig_height: int
    width: int
    height: int
    orig_bytes: int


@dataclass(frozen=True)
class Refused:
    reason: str
    detail: str
    sha256: str = ""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten any mode to RGB: alpha over white, 16-bit and float greys rescaled, palettes expanded."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else arr * 0
        img = Image.fromarray(scaled.clip(0, 255).astype("uint8"), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def process_image(data: bytes, params: ImageParams) -> Processed | Refused:
    """Check and decode `data`, orient it upright, shrink its longest side to max_side and re-encode as JPEG."""
    sha = hashlib.sha256(data).hexdigest()
    mime = sniff_mime(data[:32])
    if mime is None:
        other = sniff_unsupported(data[:64])
        if other:
            return Refused(reasons.UNSUPPORTED_FORMAT, other, sha)
        return Refused(reasons.NOT_AN_IMAGE, f"magic bytes {data[:8].hex()}", sha)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > params.max_pixels:
                return Refused(reasons.DECOMPRESSION_BOMB, f"{width}x{height} > {params.max_pixels} pixels", sha)
            if min(width, height) < params.min_side:
                return Refused(reasons.TOO_SMALL, f"{width}x{height} < {params.min_side}", sha)
            if max(width, height) / max(1, min(width, height)) > params.max_aspect_ratio:
                return Refused(reasons.ASPECT_RATIO, f"{width}x{height}", sha)
            try:
                orientation = img.getexif().get(0x0112, 1)
            except Exception:  # a broken EXIF block is not a reason to lose the picture
                orientation = 1
            orig_w, orig_h = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            scale = params.max_side / max(width, height)
            if scale < 1 and img.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the target size.
                img.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # an unreadable orientation tag leaves the picture as stored
                pass
            img = _to_rgb(img)
            if max(img.size) > params.max_side:
                img.thumbnail((params.max_side, params.max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
            out = io.BytesIO()
            img.save(out, "JPEG", quality=params.jpeg_quality, optimize=False)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Refused(reasons.DECOMPRESSION_BOMB, str(exc)[:200], sha)
    except UnidentifiedImageError as exc:
        return Refused(reasons.DECODE_ERROR, f"unidentified: {str(exc)[:160]}", sha)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, ZeroDivisionError,
            MemoryError, struct.error) as exc:
        return Refused(reasons.DECODE_ERROR, f"{type(exc).__name__}: {str(exc)[:160]}", sha)
    return Processed(
        jpeg=out.getvalue(), sha256=sha, mime=mime, orig_width=orig_w, orig_height=orig_h,
        width=img.size[0], height=img.size[1], orig_bytes=len(data),
    )


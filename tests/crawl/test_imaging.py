"""Decode/resize on real pictures (Fashion-MNIST, scikit-image photos) and on hostile files."""

import io

import numpy as np
import pytest
from PIL import Image

from tasks.crawl import reasons
from lvd.demo_web import photo_paths, decompression_bomb_png
from tasks.crawl.imaging import ImageParams, Processed, Refused, process_image, sniff_mime

PARAMS = ImageParams(max_pixels=50_000_000, min_side=32, max_aspect_ratio=4.0, max_side=512, jpeg_quality=90)


def _photo() -> Image.Image:
    paths = photo_paths()
    if paths:
        return Image.open(next(p for p in paths if p.name == "astronaut.png")).convert("RGB")
    from tasks.datasets import fashion_mnist

    return Image.fromarray(fashion_mnist.load("test").images[0]).resize((512, 512)).convert("RGB")


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _decode(out: Processed) -> Image.Image:
    img = Image.open(io.BytesIO(out.jpeg))
    assert img.format == "JPEG" and img.mode == "RGB"
    return img


def test_large_photo_is_shrunk_to_max_side_keeping_aspect():
    big = _photo().resize((1200, 800))
    out = process_image(_bytes(big, "JPEG", quality=92), PARAMS)
    assert isinstance(out, Processed)
    assert (out.orig_width, out.orig_height) == (1200, 800)
    assert (out.width, out.height) == (512, 341) and _decode(out).size == (512, 341)
    assert out.mime == "image/jpeg" and len(out.sha256) == 64


def test_small_image_is_not_upscaled():
    img = _photo().resize((200, 150))
    out = process_image(_bytes(img, "PNG"), PARAMS)
    assert (out.width, out.height) == (200, 150) and out.mime == "image/png"


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 150, 100))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    out = process_image(_bytes(img, "JPEG", exif=exif.tobytes(), quality=95), PARAMS)
    assert (out.orig_width, out.orig_height) == (100, 300) and (out.width, out.height) == (100, 300)
    top = np.asarray(_decode(out))[10, 50]
    assert top[2] > 200 and top[0] < 60  # the blue half is on top after rotation


def test_modes_become_rgb():
    rgba = Image.new("RGBA", (100, 100), (255, 0, 0, 0))  # fully transparent -> white background
    out = process_image(_bytes(rgba, "PNG"), PARAMS)
    assert tuple(np.asarray(_decode(out))[50, 50]) == pytest.approx((255, 255, 255), abs=3)
    sixteen = Image.fromarray((np.arange(100 * 100).reshape(100, 100) * 6).astype(np.uint16))
    out16 = process_image(_bytes(sixteen, "PNG"), PARAMS)
    arr = np.asarray(_decode(out16)).astype(int)
    assert arr.min() <= 5 and arr.max() >= 250  # the full 16-bit range is rescaled, not clipped
    for img, fmt in [(_photo().convert("P", palette=Image.Palette.ADAPTIVE), "GIF"), (_photo().convert("L"), "PNG"),
                     (_photo().convert("CMYK"), "JPEG"), (_photo(), "WEBP"), (_photo(), "BMP"), (_photo(), "TIFF")]:
        assert isinstance(process_image(_bytes(img, fmt), PARAMS), Processed), fmt


@pytest.mark.parametrize(
    "data, reason",
    [
        (decompression_bomb_png(60_000, 60_000), reasons.DECOMPRESSION_BOMB),
        (decompression_bomb_png(9_000, 9_000), reasons.DECOMPRESSION_BOMB),  # over our limit, under Pillow's
        (b"<!doctype html><html>" * 10, reasons.NOT_AN_IMAGE),
        (b"", reasons.NOT_AN_IMAGE),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', reasons.UNSUPPORTED_FORMAT),
        (b"\x00\x00\x00\x1cftypavif" + b"\x00" * 64, reasons.UNSUPPORTED_FORMAT),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, reasons.DECODE_ERROR),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, reasons.DECODE_ERROR),
    ],
)
def test_hostile_files_are_refused_with_a_reason(data, reason):
    out = process_image(data, PARAMS)
    assert isinstance(out, Refused) and out.reason == reason, out


def test_truncated_tiny_and_extreme_aspect():
    good = _bytes(_photo().resize((300, 300)), "JPEG")
    assert process_image(good[: len(good) // 2], PARAMS).reason == reasons.DECODE_ERROR
    assert process_image(_bytes(_photo().resize((16, 16)), "PNG"), PARAMS).reason == reasons.TOO_SMALL
    assert process_image(_bytes(_photo().resize((1000, 100)), "PNG"), PARAMS).reason == reasons.ASPECT_RATIO


def test_sniff_mime():
    assert sniff_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_mime(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff_mime(b"GIF89a....") == "image/gif"

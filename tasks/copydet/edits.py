"""The copy-edit family a detector learns to see through, drawn at random with PIL.

The edits are DISC21's families, the ones ``tasks.dedup.planted`` plants (with AugLy, fixed
parameters) to benchmark detectors: crops down to ~30% of the area, mirror flips, small
rotations (black corners), text and emoji-like overlays, screenshot framing, padding, grayscale,
colour shifts, blur, downscaling and JPEG re-encoding. Here each edit's parameters are drawn from a
seeded generator, so training views, calibration copies (their own seed) and the benchmark's
planted copies (AugLy, other photos) are separate draws of one family. Pillow only: nothing
beyond the base dependencies is needed to train or calibrate.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from tasks.dedup.sscd import to_tensor

# The edit types of the family, named as tasks.dedup.planted names its planted copies (and rotation).
EDITS = ("reencode", "resize", "crop", "colour", "text", "emoji", "pad", "grey-pad", "screenshot", "flip", "rotate")
WORDS = ("COPYRIGHT", "lvd", "2026", "photo", "SALE", "news", "@user", "stock", "meme", "www.example.org", "HD")


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(8, int(size)))


def crop(img: Image.Image, rng: np.random.Generator, min_area: float = 0.3) -> Image.Image:
    w, h = img.size
    for _ in range(10):
        area = rng.uniform(min_area, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return img.crop((x, y, x + cw, y + ch))
    return img


def flip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.transpose(Image.FLIP_LEFT_RIGHT)


def rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.rotate(float(rng.uniform(-25, 25)), resample=Image.BILINEAR, expand=bool(rng.random() < 0.5))


def text(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = img.copy()
    draw = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(1, 3))):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))).tolist())
        size = out.height * rng.uniform(0.06, 0.16)
        xy = (out.width * rng.uniform(0, 0.6), out.height * rng.uniform(0, 0.85))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.text(xy, words, fill=colour, font=_font(size), stroke_width=int(rng.integers(0, 3)), stroke_fill=(0, 0, 0))
    return out


def emoji(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A face-like sticker (disc, eyes, mouth) of 10-30% of the side, somewhere on the image."""
    out = img.copy()
    draw = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(1, 3))):
        s = max(4, int(min(out.size) * rng.uniform(0.1, 0.3)))
        x, y = int(rng.uniform(0, out.width - s)), int(rng.uniform(0, out.height - s))
        face = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x, y, x + s, y + s), fill=face, outline=(0, 0, 0), width=max(1, s // 20))
        e = max(1, s // 8)
        for ex in (x + s * 0.3, x + s * 0.7):
            draw.ellipse((ex - e, y + s * 0.35 - e, ex + e, y + s * 0.35 + e), fill=(0, 0, 0))
        draw.arc((x + s * 0.25, y + s * 0.4, x + s * 0.75, y + s * 0.8), 20, 160, fill=(0, 0, 0), width=max(1, s // 15))
    return out


def pad(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    fx, fy = rng.uniform(0.0, 0.25, 2)
    colour = tuple(int(c) for c in (rng.integers(0, 256, 3) if rng.random() < 0.5 else [255 * int(rng.random() < 0.5)] * 3))
    canvas = Image.new("RGB", (w + 2 * int(w * fx), h + 2 * int(h * fy)), colour)
    canvas.paste(img, (int(w * fx), int(h * fy)))
    return canvas


def grey_pad(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return pad(grey(img, rng), rng)


def grey(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.convert("L").convert("RGB")


def screenshot(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The image pasted into a window or phone frame: title bar, side panel, text lines around it."""
    w, h = img.size
    scale = rng.uniform(0.5, 0.85)
    cw, ch = int(w / scale), int(h / scale)
    bg = int(rng.integers(200, 256)) if rng.random() < 0.7 else int(rng.integers(10, 60))
    canvas = Image.new("RGB", (cw, ch), (bg, bg, bg))
    draw = ImageDraw.Draw(canvas)
    bar = max(4, int(ch * rng.uniform(0.04, 0.1)))
    draw.rectangle((0, 0, cw, bar), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    x = int(rng.uniform(0, cw - w))
    y = int(rng.uniform(bar, max(bar + 1, ch - h)))
    canvas.paste(img, (x, min(y, ch - h)))
    ink = 255 - bg
    for i in range(int(rng.integers(2, 6))):
        ty = int(rng.uniform(0, ch))
        if ty < y or ty > y + h:
            draw.text((int(cw * 0.05), ty), " ".join(rng.choice(WORDS, size=3).tolist()), fill=(ink, ink, ink),
                      font=_font(max(8, ch * 0.03)))
    return canvas


def colour(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(float(rng.uniform(0.6, 1.5)))
    return img


def blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.5)) * max(img.size) / 256))


def resize(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    f = rng.uniform(0.3, 0.8)
    return img.resize((max(8, int(img.width * f)), max(8, int(img.height * f))), Image.BILINEAR)


def reencode(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(15, 90)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


EDIT_FUNCTIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "reencode": reencode, "resize": resize, "crop": crop, "colour": colour, "text": text, "emoji": emoji,
    "pad": pad, "grey-pad": grey_pad, "screenshot": screenshot, "flip": flip, "rotate": rotate,
}


def edit(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """One edit of type ``kind`` with parameters drawn from ``rng``."""
    if kind not in EDIT_FUNCTIONS:
        raise ValueError(f"unknown edit {kind!r}; known: {list(EDIT_FUNCTIONS)}")
    return EDIT_FUNCTIONS[kind](img.convert("RGB"), rng)


def strong_view(img: Image.Image, rng: np.random.Generator, min_crop_area: float = 0.3) -> Image.Image:
    """SSCD's strong augmentation: a crop (always), then each edit of the family with its probability."""
    img = crop(img.convert("RGB"), rng, min_crop_area)
    steps = (
        (0.5, flip), (0.2, rotate), (0.2, text), (0.2, emoji), (0.15, screenshot), (0.2, pad),
        (0.2, grey), (0.5, colour), (0.2, blur), (0.2, resize), (0.5, reencode),
    )
    for p, fn in steps:
        if rng.random() < p:
            img = fn(img, rng)
    return img


def working_copy(img: Image.Image, size: int) -> Image.Image:
    """RGB ``img`` with its long side capped at ``4 * size`` (edits on a huge photo cost time, not detail:
    a crop to 30% still holds more pixels than the network sees)."""
    img = img.convert("RGB")
    cap = 4 * size
    if max(img.size) > cap:
        f = cap / max(img.size)
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BILINEAR)
    return img


class CopyViews:
    """``views(image, generator) -> {"global_crops": [view 1, view 2], "local_crops": []}``: two strongly
    edited views of one image at ``size`` x ``size``, ImageNet-normalised (the inference preprocessing
    of :class:`tasks.dedup.model_copy.ModelCopyEmbedder`: the whole picture squashed to a square)."""

    def __init__(self, size: int, min_crop_area: float = 0.3) -> None:
        self.size, self.min_crop_area = size, min_crop_area

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> dict[str, list[torch.Tensor]]:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        rng = np.random.default_rng(seed)
        image = working_copy(image, self.size)
        views = [to_tensor(strong_view(image, rng, self.min_crop_area), (self.size, self.size)) for _ in range(2)]
        return {"global_crops": views, "local_crops": []}

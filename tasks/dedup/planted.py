"""A planted-duplicate pool from real photos that packages ship, for measuring the detectors.

Sources are the sample photos of scikit-image and scikit-learn and, where the Debian packages are
installed, the OpenCV sample photos (``opencv-doc``) and the MATE wallpapers
(``mate-backgrounds``). Each source yields one "original" (JPEG bytes as a server would send them)
and, for the sources chosen to carry copies, one copy per edit type. The copy edits are the
DISC21 families, made with AugLy (offline, its own fonts and emoji): byte-identical copies,
JPEG re-encoding, downscaling, crops, colour shifts, text and emoji overlays, padding (black, or white around a grey copy), screenshot
framing and mirror flips. Sources without copies are the negatives: distinct photos that must not
be grouped with anything.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Distinct photos only: of the OpenCV same-scene pairs (aero1/3, graf1/3, leuvenA/B, ...) one side is listed.
OPENCV_PHOTOS = (
    "aero1.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg", "fruits.jpg",
    "graf1.png", "HappyFish.jpg", "home.jpg", "leuvenA.jpg", "left.jpg", "licenseplate_motion.jpg",
    "messi5.jpg", "orange.jpg", "pca_test1.jpg", "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg",
    "starry_night.jpg", "stuff.jpg", "text_defocus.jpg", "Blender_Suzanne1.jpg", "ela_original.jpg",
    "lena.jpg", "pic1.png", "aloeL.jpg",
)
OPENCV_DIR = "/usr/share/doc/opencv-doc/examples/data"
MATE_DIR = "/usr/share/backgrounds/mate"
# Wallpapers that are renders of one theme in several colours would be copies of each other.
MATE_PHOTOS = (
    "nature/Aqua.jpg", "nature/Blinds.jpg", "nature/Dune.jpg", "nature/FreshFlower.jpg", "nature/Garden.jpg",
    "nature/GreenMeadow.jpg", "nature/LadyBird.jpg", "nature/RainDrops.jpg", "nature/Storm.jpg",
    "nature/TwoWings.jpg", "nature/Wood.jpg", "nature/YellowFlower.jpg", "abstract/Elephants.jpg",
    "desktop/GreenTraditional.jpg",
)
SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "motorcycle_left",
    "camera", "coins", "moon", "immunohistochemistry", "brick", "grass", "gravel",
)
MAX_SIDE = 1024


@dataclass(frozen=True)
class PlantedImage:
    """One pool image: where it came from and which edit (``"original"`` for sources) made it."""

    key: str
    source: str
    edit: str
    data: bytes


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _capped(img: Image.Image) -> Image.Image:
    img = img.convert("RGB")
    scale = MAX_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    return img


def source_photos() -> list[tuple[str, Image.Image]]:
    """``(name, RGB image)`` of every available source photo, longest side capped at 1024."""
    out: list[tuple[str, Image.Image]] = []
    from skimage import data as skdata

    for name in SKIMAGE_PHOTOS:
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        try:
            arr = loader()
        except Exception:  # a sample that would need a download is simply absent offline
            continue
        out.append((f"skimage/{name}", _capped(Image.fromarray(np.asarray(arr)))))
    try:
        from sklearn.datasets import load_sample_images

        for i, arr in enumerate(load_sample_images().images):
            out.append((f"sklearn/{('china', 'flower')[i] if i < 2 else i}", _capped(Image.fromarray(arr))))
    except ImportError:
        pass
    for rel in OPENCV_PHOTOS:
        path = os.path.join(OPENCV_DIR, rel)
        if os.path.exists(path):
            out.append((f"opencv/{rel}", _capped(Image.open(path))))
    for rel in MATE_PHOTOS:
        path = os.path.join(MATE_DIR, rel)
        if os.path.exists(path):
            out.append((f"mate/{rel}", _capped(Image.open(path))))
    return out


def _augly():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import augly.image as imaugs
    return imaugs


def _edits() -> dict[str, Callable[[Image.Image, bytes], bytes]]:
    A = _augly()
    return {
        "exact": lambda img, orig: orig,
        "reencode": lambda img, orig: _jpeg(img, quality=35),
        "resize": lambda img, orig: _jpeg(img.resize((max(8, img.width * 2 // 5), max(8, img.height * 2 // 5)), Image.BILINEAR), 85),
        "crop": lambda img, orig: _jpeg(A.crop(img, x1=0.1, y1=0.08, x2=0.92, y2=0.9)),
        "colour": lambda img, orig: _jpeg(A.color_jitter(img, brightness_factor=1.25, contrast_factor=1.2, saturation_factor=1.4)),
        "text": lambda img, orig: _jpeg(_caption(img, "COPYRIGHT lvd 2026")),
        "emoji": lambda img, orig: _jpeg(A.overlay_emoji(img, emoji_size=0.2, x_pos=0.6, y_pos=0.6)),
        "pad": lambda img, orig: _jpeg(A.pad(img, w_factor=0.1, h_factor=0.1, color=(0, 0, 0))),
        "grey-pad": lambda img, orig: _jpeg(A.pad(A.grayscale(img), w_factor=0.15, h_factor=0.15, color=(255, 255, 255))),
        "screenshot": lambda img, orig: _jpeg(A.overlay_onto_screenshot(img)),
        "flip": lambda img, orig: _jpeg(img.transpose(Image.FLIP_LEFT_RIGHT)),
    }


def _caption(img: Image.Image, text: str) -> Image.Image:
    """Bold caption across the lower third in AugLy's bundled IBM Plex Sans (AugLy's own text overlay
    draws its characters from a set, so its output changes between processes)."""
    from PIL import ImageDraw, ImageFont

    font_path = os.path.join(os.path.dirname(_augly().__file__), "..", "assets", "fonts", "IBMPlexSans-Bold.ttf")
    out = img.convert("RGB").copy()
    font = ImageFont.truetype(os.path.normpath(font_path), size=max(8, out.height // 9))
    ImageDraw.Draw(out).text((out.width // 20, out.height * 2 // 3), text, fill=(255, 255, 0), font=font)
    return out


EDIT_TYPES = ("exact", "reencode", "resize", "crop", "colour", "text", "emoji", "pad", "grey-pad", "screenshot", "flip")


def planted_pool(
    n_with_copies: int | None = None, edits: tuple[str, ...] = EDIT_TYPES, seed: int = 0
) -> list[PlantedImage]:
    """Originals of every source photo plus edited copies of ``n_with_copies`` of them.

    Which sources carry copies is a seeded draw (default: half of them); the others are negatives.
    Keys are ``planted-{i:05d}`` in a seeded shuffle, so the pool order says nothing about groups.
    """
    sources = source_photos()
    if len(sources) < 4:
        raise RuntimeError("too few sample photos found: install scikit-image (and opencv-doc / mate-backgrounds)")
    rng = np.random.default_rng(seed)
    n_with_copies = len(sources) // 2 if n_with_copies is None else min(n_with_copies, len(sources))
    with_copies = set(rng.choice(len(sources), size=n_with_copies, replace=False).tolist())
    make = _edits()
    unknown = set(edits) - set(make)
    if unknown:
        raise ValueError(f"unknown edit types {sorted(unknown)}; known: {sorted(make)}")
    items: list[tuple[str, str, bytes]] = []
    for s, (name, img) in enumerate(sources):
        orig = _jpeg(img, quality=92)
        items.append((name, "original", orig))
        if s in with_copies:
            for edit in edits:
                items.append((name, edit, make[edit](img, orig)))
    order = rng.permutation(len(items))
    return [PlantedImage(f"planted-{i:05d}", *items[j]) for i, j in enumerate(order)]


def crawl_sample(item: PlantedImage, page: str = "https://example.org/planted") -> tuple[bytes, dict]:
    """The ``(jpg, json)`` a crawl shard holds for this image: longest side 512, original's sha256."""
    img = Image.open(io.BytesIO(item.data)).convert("RGB")
    ow, oh = img.size
    scale = 512 / max(ow, oh)
    if scale < 1:
        img = img.resize((max(1, round(ow * scale)), max(1, round(oh * scale))), Image.BICUBIC)
    jpg = _jpeg(img, quality=90)
    meta = {
        "url": f"https://example.org/img/{item.key}.jpg", "page": page,
        "sha256": hashlib.sha256(item.data).hexdigest(), "orig_width": ow, "orig_height": oh,
        "width": img.width, "height": img.height, "bytes": len(item.data),
    }
    return jpg, meta


def true_pairs(items: list[PlantedImage]) -> dict[tuple[str, str], str]:
    """``(original key, copy key) -> edit`` for every planted copy."""
    originals = {it.source: it.key for it in items if it.edit == "original"}
    return {(originals[it.source], it.key): it.edit for it in items if it.edit != "original"}


def write_crawl_stage(stage_uri: str, items: list[PlantedImage], shard_size: int = 100,
                      extra_samples: dict[str, dict] | None = None) -> list[str]:
    """Write ``items`` as a committed crawl-like stage (``pool-*.tar`` + manifest); return shard URLs.

    ``extra_samples`` adds raw samples (key -> fields) to the last shard, e.g. corrupt images.
    """
    from storage.commit import commit_stage
    from storage.shards import ShardWriter, write_manifest
    from storage.uri import join

    infos = []
    chunks = [items[i:i + shard_size] for i in range(0, len(items), shard_size)] or [[]]
    for s, chunk in enumerate(chunks):
        with ShardWriter(join(stage_uri, f"pool-{s:06d}.tar")) as writer:
            for it in chunk:
                jpg, meta = crawl_sample(it)
                writer.write(it.key, {"jpg": jpg, "json": meta})
            if s == len(chunks) - 1:
                for key, fields in (extra_samples or {}).items():
                    writer.write(key, fields)
        infos.append(writer.close())
    write_manifest(stage_uri, infos)
    commit_stage(stage_uri, stage="crawl", config_digest="planted", input_digest="planted",
                 counts={"images": len(items) + len(extra_samples or {})})
    return [i.url for i in infos]

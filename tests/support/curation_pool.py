"""A small real-image pool for the embed/retrieve/shard tests: in-domain and out-of-domain images.

In-domain: Fashion-MNIST test images. Out-of-domain: scikit-learn's handwritten digits and
random crops of the packaged scikit-learn / scikit-image photographs. Queries: Fashion-MNIST
*train* images (so no query is itself in the pool), written as an image folder with one
subfolder per class. Everything is encoded as JPEG, like a crawl.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import hashlib
import io
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from storage.shards import ShardWriter
from tasks.datasets import fashion_mnist

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "horse", "moon", "brick", "grass",
               "gravel", "clock", "page", "text", "stereo_motorcycle", "colorwheel", "cat")


def jpeg(arr: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """The packaged photographs (scikit-learn's two, then scikit-image's), as uint8 arrays."""
    import skimage.data

    images = os.path.join(_sklearn_dir(), "datasets", "images")
    out = [np.asarray(Image.open(os.path.join(images, name)).convert("RGB")) for name in ("china.jpg", "flower.jpg")]
    for name in PHOTO_NAMES:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img
        out.append(np.asarray(img[..., :3] if img.ndim == 3 else img, dtype=np.uint8))
    return tuple(out)


def photo_crops(n: int, seed: int = 0) -> list[np.ndarray]:
    """Random square-ish crops (48-256 px) of the photographs, resized to 64-128 px."""
    rng = np.random.default_rng(seed)
    pics = photos()
    out = []
    for i in range(n):
        img = pics[i % len(pics)]
        h, w = img.shape[:2]
        side = int(rng.integers(48, min(h, w, 256) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(img[y : y + side, x : x + side])
        size = int(rng.integers(64, 129))
        out.append(np.asarray(crop.resize((size, size), Image.BILINEAR)))
    return out


def _sklearn_dir() -> str:
    # The data files are read directly: importing scikit-learn costs seconds and is not needed.
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-learn is not installed (dev extra)")
    return list(spec.submodule_search_locations)[0]


def digits(n: int) -> list[np.ndarray]:
    """scikit-learn's packaged handwritten digits (8x8, 0-16) as 32x32 uint8 images."""
    with gzip.open(os.path.join(_sklearn_dir(), "datasets", "data", "digits.csv.gz"), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", max_rows=n)
    d = rows[:, :64].reshape(-1, 8, 8)
    return [np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR)) for im in d]


@dataclass
class CurationPool:
    """Where the pool and queries are, and the ground truth the tests score against."""

    crawl_uri: str
    shard_urls: list[str]
    query_dir: str
    domain: dict[str, str] = field(default_factory=dict)  # key -> "fmnist" | "digits" | "photo"
    label: dict[str, int] = field(default_factory=dict)  # key -> Fashion-MNIST class (in-domain keys only)
    query_labels: list[int] = field(default_factory=list)


def build_pool(root: str, n_fmnist: int = 1000, n_digits: int = 500, n_photos: int = 500, n_queries: int = 200,
               per_shard: int = 700, seed: int = 0) -> CurationPool:
    """Write ``{root}/crawl/pool-*.tar`` (shuffled sources) and ``{root}/queries/fmnist/<class>/*.png``."""
    test = fashion_mnist.load("test").subset(n_fmnist, seed=seed)
    items = [("fmnist", jpeg(a), int(y)) for a, y in zip(test.images, test.labels)]
    items += [("digits", jpeg(a), -1) for a in digits(n_digits)]
    items += [("photo", jpeg(a), -1) for a in photo_crops(n_photos, seed)]
    order = np.random.default_rng(seed).permutation(len(items))
    crawl = os.path.join(root, "crawl")
    pool = CurationPool(crawl, [], os.path.join(root, "queries", "fmnist"))
    writer = None
    for pos, j in enumerate(order):
        if pos % per_shard == 0:
            if writer is not None:
                writer.close()
            url = os.path.join(crawl, f"pool-{pos // per_shard:06d}.tar")
            pool.shard_urls.append(url)
            writer = ShardWriter(url)
        domain, data, label = items[j]
        key = f"{pos // per_shard:06d}{pos % per_shard:05d}"
        writer.write(key, {"jpg": data, "json": {"url": f"https://example.org/{domain}/{j}.jpg",
                                                 "page": f"https://example.org/{domain}/",
                                                 "sha256": hashlib.sha256(data).hexdigest()}})
        pool.domain[key] = domain
        if label >= 0:
            pool.label[key] = label
    writer.close()
    train = fashion_mnist.load("train").subset(n_queries, seed=seed + 1)
    for i, (a, y) in enumerate(zip(train.images, train.labels)):
        d = os.path.join(pool.query_dir, f"class{int(y)}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(a).save(os.path.join(d, f"q{i:05d}.png"))
        pool.query_labels.append(int(y))
    return pool

"""Real photos and a committed crawl stage made from them, for the safety tests.

The photos are the ones scikit-image ships: two with faces (astronaut, camera) and ordinary
ones without (coffee, chelsea the cat, rocket, ...). The crawl stage is written with the
storage contract the crawl stage uses (pool-*.tar of {key}.jpg + {key}.json, manifest, commit).
"""

from __future__ import annotations

import functools
import hashlib
import io

import numpy as np
from PIL import Image

from storage.commit import commit_stage
from storage.shards import ShardWriter, write_manifest
from storage.uri import join

FACES = ("astronaut", "camera")
NO_FACES = ("coffee", "chelsea", "rocket", "coins", "moon", "page", "brick", "clock", "immunohistochemistry")


@functools.lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """RGB uint8 array of a scikit-image sample photo, longest side at most 512 (as the crawl stores them)."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    arr = arr[0] if isinstance(arr, tuple) else arr
    img = Image.fromarray(np.asarray(arr, dtype=np.uint8)).convert("RGB")
    img.thumbnail((512, 512), Image.Resampling.LANCZOS)
    return np.asarray(img)


def jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_crawl_stage(stage_uri: str, shards: list[list[str]], corrupt: dict[int, int] | None = None) -> dict[str, str]:
    """Write and commit a crawl stage whose shard i holds the named photos; ``corrupt`` maps a shard to a
    count of undecodable samples appended to it. Returns key -> photo name ("corrupt" for the bad ones)."""
    corrupt = corrupt or {}
    infos, names = [], {}
    for s, photos in enumerate(shards):
        with ShardWriter(join(stage_uri, f"pool-{s:06d}-000.tar")) as w:
            bad = [("corrupt", b"\xff\xd8\xff\xe0 truncated")] * corrupt.get(s, 0)
            items = [(p, jpeg(photo(p))) for p in photos] + bad
            for i, (name, data) in enumerate(items):
                key = f"{s:06d}-{i + 1:07d}"
                h, wdt = photo(name).shape[:2] if name != "corrupt" else (0, 0)
                meta = {"url": f"http://photos.example.org/{name}-{i}.jpg", "page": "http://photos.example.org/",
                        "sha256": hashlib.sha256(data).hexdigest(), "width": wdt, "height": h,
                        "bytes": len(data), "key": key}
                w.write(key, {"jpg": data, "json": meta})
                names[key] = name
        infos.append(w.close())
    write_manifest(stage_uri, infos)
    commit_stage(stage_uri, stage="crawl", config_digest="c" * 64, input_digest="i" * 64,
                 counts={"samples": sum(i.nsamples for i in infos), "shards": len(infos)})
    return names

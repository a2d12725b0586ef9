"""Throughput of the safety stage's steps on this machine, per step and end to end.

Images are the scikit-image sample photos (faces and ordinary scenes) re-encoded as the crawl
stores them (JPEG, longest side 512), repeated to ``--images``. Steps run in one process with
one thread each (images/s per core): decode, NSFW scoring with the shipped open_nsfw model,
face detection with the default cascades and with the fast ones, blur + re-encode of a face.
Then whole parts (one crawl shard in, one safety shard out) with 1 and 2 worker processes,
worker start included.

    python -m benchmarks.safety --images 96
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import tempfile
import time

import numpy as np
from PIL import Image

from storage.commit import commit_stage
from storage.shards import ShardWriter, write_manifest
from tasks.safety.blur import blur_faces
from tasks.safety.config import FaceConfig, NsfwConfig, SafetyConfig
from tasks.safety.faces import build_face_detector
from tasks.safety.models import resolve_model
from tasks.safety.nsfw import NsfwClassifier
from tasks.safety.process import decode, encode_jpeg
from tasks.safety.stage import finalize_safety, plan_safety_parts, safety_input_digest, safety_part

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "brick", "clock", "page")
FAST_FACES = {"detectors": ["builtin:haar-frontal-alt2"], "scale_factor": 1.2}


def photos(n: int) -> list[bytes]:
    import skimage.data

    out = []
    for name in PHOTOS:
        img = Image.fromarray(np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)).convert("RGB")
        img.thumbnail((512, 512), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return [out[i % len(out)] for i in range(n)]


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes are waited for per part)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def rate(fn, items) -> tuple[float, float]:
    """(images per wall second, images per CPU second): the second holds on a busy machine too."""
    start, cpu = time.perf_counter(), cpu_seconds()
    fn(items)
    return len(items) / (time.perf_counter() - start), len(items) / (cpu_seconds() - cpu)


def step_rates(jpgs: list[bytes]) -> list[tuple[str, tuple[float, float]]]:
    images = [decode(j)[0] for j in jpgs]
    arrays = [np.asarray(img) for img in images]
    nsfw = NsfwClassifier(resolve_model("builtin:open-nsfw"), NsfwConfig(), "cpu", threads=1)
    nsfw.scores(images[:2])  # warm up
    rows = [("decode JPEG", rate(lambda xs: [decode(x) for x in xs], jpgs)),
            ("NSFW score (open_nsfw, 224, batch 16)", rate(nsfw.scores, images))]
    for label, over in (("faces, default: frontal-alt2 + profile (and mirrored), scale 1.2", {}),
                        ("faces: frontal-alt2 + profile (and mirrored), scale 1.1", {"scale_factor": 1.1}),
                        ("faces, fast: frontal-alt2 only, scale 1.2", FAST_FACES)):
        cfg = FaceConfig(**over)
        det = build_face_detector([resolve_model(u) for u in cfg.detectors], cfg)
        rows.append((label, rate(lambda xs: [det.detect(a) for a in xs], arrays)))
    face = [(images[0], [(176, 65, 98, 98)])] * len(images)
    rows.append(("blur one face + re-encode JPEG q95", rate(
        lambda xs: [encode_jpeg(blur_faces(img, b, "gaussian", 0.25, 0.15)[0], 95) for img, b in xs], face)))
    return rows


def stage_rates(jpgs: list[bytes], root: str) -> list[tuple[str, tuple[float, float]]]:
    crawl = f"file://{root}/crawl"
    with ShardWriter(f"{crawl}/pool-000000-000.tar") as w:
        for i, data in enumerate(jpgs):
            w.write(f"000000-{i:07d}", {"jpg": data, "json": {"key": f"000000-{i:07d}", "bytes": len(data)}})
    write_manifest(crawl, [w.close()])
    commit_stage(crawl, stage="crawl", config_digest="b" * 64, input_digest="b" * 64, counts={})
    rows = []
    for workers, label, faces in ((1, "fast faces", FAST_FACES), (2, "fast faces", FAST_FACES), (2, "default", {})):
        cfg = SafetyConfig(workers=workers, faces=faces)
        out = f"file://{root}/safety-{workers}-{label.replace(' ', '-')}"
        parts = plan_safety_parts(crawl, cfg)

        def run(_):
            for p in parts:
                safety_part(p, out, cfg)
            finalize_safety(out, parts, cfg, safety_input_digest(crawl, cfg))

        rows.append((f"stage part, {workers} worker(s), {label} settings, worker start included", rate(run, jpgs)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    args = parser.parse_args()
    jpgs = photos(args.images)
    print(f"{platform.machine()}, {os.cpu_count()} cores, {args.images} images (longest side 512)\n")
    print(f"load average at start: {os.getloadavg()[0]:.1f}\n")
    print("| step | images/s (wall) | images per CPU-second |\n|---|---:|---:|")
    for label, (wall, cpu) in step_rates(jpgs):
        print(f"| {label} | {wall:.1f} | {cpu:.1f} |", flush=True)
    with tempfile.TemporaryDirectory() as root:
        for label, (wall, cpu) in stage_rates(jpgs, root):
            print(f"| {label} | {wall:.1f} | {cpu:.1f} |", flush=True)


if __name__ == "__main__":
    main()

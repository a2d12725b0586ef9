"""Embedding throughput of the paper's curation embedder (ViT-H/16, 224 px) through the embed loader.

JPEG decode + resize/crop + forward, as the embed stage runs it; random-init weights (the released
ones cost the same). Prints images/s (wall), images per CPU-second of this process (comparable
under load) and the forward FLOPs per image, counted from the architecture (2 x multiply-adds of
every matmul, attention included), which the scale plan divides by GPU throughput.

Usage: python -m benchmarks.embed_vith [--images 16] [--batch 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from models.presets import vit_kwargs
from tasks.embed.backbone import load_embedder
from tasks.embed.loader import embed_items
from tests.support.curation_pool import jpeg, photo_crops


def forward_flops(preset: str, image_size: int = 224) -> float:
    """FLOPs of one forward pass (2 per multiply-add): patch embedding, qkv/proj/MLP, attention."""
    kw = vit_kwargs(preset)
    d, depth, patch, ratio = kw["embed_dim"], kw["depth"], kw["patch_size"], kw["mlp_ratio"]
    n = (image_size // patch) ** 2
    tokens = n + 1 + kw.get("num_register_tokens", 0)
    patch_embed = 2 * n * (3 * patch * patch) * d
    per_block = 2 * tokens * (4 * d * d + 2 * d * int(d * ratio)) + 2 * 2 * tokens * tokens * d
    return patch_embed + depth * per_block


def _items(blobs):
    return [(f"k{i}", b) for i, b in enumerate(blobs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--presets", default="vit_small,vit_large,vith16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    blobs = [jpeg(a) for a in photo_crops(args.images, seed=0)]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.images} images, batch {args.batch}\n")
    print("| backbone | params (M) | GFLOPs / image (224 px) | images/s (wall) | images per CPU-s |")
    print("|---|---:|---:|---:|---:|")
    for preset in args.presets.split(","):
        emb = load_embedder(f"random:{preset}", "cpu", image_size=224)
        params = sum(p.numel() for p in emb.module.parameters()) / 1e6
        embed_items(emb, functools.partial(_items, blobs[: args.batch]), args.batch, 0)  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        keys, _, _ = embed_items(emb, functools.partial(_items, blobs), args.batch, 0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"| {preset} | {params:,.0f} | {forward_flops(preset) / 1e9:,.1f} | {len(keys) / wall:.2f} "
              f"| {len(keys) / cpu:.2f} |")
        del emb


if __name__ == "__main__":
    main()

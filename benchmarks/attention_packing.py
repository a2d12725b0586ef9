"""Throughput of a ViT-S-ish block stack on one DINOv2 multi-crop step: packed vs unpacked crops,
efficient (subset) stochastic depth vs per-sample DropPath. Forward + backward, CPU by default.

    python -m benchmarks.attention_packing [--images 2] [--depth 4] [--rate 0.4] [--rounds 5]

Each image brings 2 global crops (224 px, 257 tokens) and 8 local crops (98 px, 50 tokens).
Tokens/s counts input tokens, so skipped branch work under subset stochastic depth shows up as
higher throughput. Configurations are measured in interleaved rounds and the median is reported.
Both wall-clock tokens/s and tokens per CPU-second of this process are printed: on a shared,
oversubscribed machine the CPU-time figure (best with --threads 1) is the one that stays
comparable between runs. A second table times the block-diagonal attention kernels that could
serve packed crops (same values, different cost).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from models.attention import packed_attention
from models.packing import Packing
from models.presets import build_vit

CONFIGS = [  # (label, packed, drop path mode, uses rate)
    ("unpacked, no stochastic depth", False, "subset", False),
    ("packed, no stochastic depth", True, "subset", False),
    ("unpacked, per-sample DropPath", False, "per_sample", True),
    ("packed, per-sample DropPath", True, "per_sample", True),
    ("unpacked, subset SD", False, "subset", True),
    ("packed, subset SD", True, "subset", True),
]


def make_crops(images: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(2 * images, 3, 224, 224, generator=g).to(device),
        torch.randn(8 * images, 3, 98, 98, generator=g).to(device),
    ]


def step(model: torch.nn.Module, crops: list[torch.Tensor]) -> None:
    outs = model.forward_features(crops)
    loss = sum(o["x_norm_clstoken"].square().mean() + o["x_norm_patchtokens"].square().mean() for o in outs)
    loss.backward()


def timed(fn, repeat: int = 1) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per call of fn, averaged over `repeat` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - wall) / repeat, (time.process_time() - cpu) / repeat


def bench_blocks(args: argparse.Namespace, device: torch.device) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) throughput in tokens/s for each configuration."""
    crops = make_crops(args.images, device)
    tokens = sum(c.shape[0] * (1 + (c.shape[-1] // 14) ** 2) for c in crops)
    models = []
    for label, packed, mode, uses_rate in CONFIGS:
        torch.manual_seed(0)
        model = build_vit(
            "vit_small",
            depth=args.depth,
            drop_path_rate=args.rate if uses_rate else 0.0,
            drop_path_mode=mode,
            packed=packed,
            attn_impl="sdpa",
        ).to(device)
        model.train()
        step(model, crops)  # warm-up
        models.append((label, model))
    times: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in models}

    def one_step(model):
        step(model, crops)
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.rounds):
        for label, model in models:
            torch.manual_seed(1)
            times[label].append(timed(lambda: one_step(model), args.steps))
    return {
        label: tuple(tokens / statistics.median(t[i] for t in times[label]) for i in (0, 1))
        for label, _ in models
    }


def bench_kernels(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """Forward + backward of one attention call over 2B x 257 + 8B x 50 tokens, 6 heads of 64."""
    b = args.images
    packing = Packing(((2 * b, 257), (8 * b, 50)))
    seg = torch.repeat_interleave(torch.arange(len(packing.seqlens())), torch.tensor(packing.seqlens()))
    dense_mask = seg[:, None] == seg[None, :]
    offsets = torch.tensor([0] + packing.seqlens()).cumsum(0)

    def per_group(q, k, v):
        return packed_attention(q, k, v, packing, impl="sdpa")

    def dense(q, k, v):
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask)[0].transpose(0, 1)

    def nested(q, k, v):
        q, k, v = (torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).values()

    torch.manual_seed(0)
    qkv = [torch.randn(packing.num_tokens, 6, 64, requires_grad=True) for _ in range(3)]
    rows = []
    for label, fn in [
        ("SDPA per crop group (used)", per_group),
        ("SDPA, dense block-diagonal mask", dense),
        ("SDPA on nested jagged tensors", nested),
    ]:
        fn(*qkv).sum().backward()
        samples = [timed(lambda: fn(*qkv).sum().backward()) for _ in range(args.rounds)]
        rows.append((label, *(statistics.median(t[i] for t in samples) * 1e3 for i in (0, 1))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="images per step (2 global + 8 local crops each)")
    parser.add_argument("--depth", type=int, default=4, help="ViT-S blocks in the stack")
    parser.add_argument("--rate", type=float, default=0.4, help="stochastic depth rate")
    parser.add_argument("--steps", type=int, default=2, help="steps per timed sample")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}")  # fmt: skip
    print(f"ViT-S blocks (dim 384, 6 heads) x {args.depth}, {args.images} images = "
          f"{2 * args.images}x224 + {8 * args.images}x98 crops, drop rate {args.rate}, fwd+bwd\n")  # fmt: skip
    rows = bench_blocks(args, device)
    base = rows["unpacked, per-sample DropPath"]
    print("| configuration | tokens/s (wall) | tokens per CPU-s | vs unpacked + per-sample DropPath (wall / CPU) |")
    print("|---|---:|---:|---:|")
    for label, (wall, cpu) in rows.items():
        print(f"| {label} | {wall:,.0f} | {cpu:,.0f} | {wall / base[0]:.2f}x / {cpu / base[1]:.2f}x |")
    print()
    print("| ratio | wall | CPU |")
    print("|---|---:|---:|")

    def ratio(a: str, b: str) -> str:
        return " | ".join(f"{rows[a][i] / rows[b][i]:.2f}" for i in (0, 1))

    for mode in ("no stochastic depth", "per-sample DropPath", "subset SD"):
        print(f"| packed / unpacked, {mode} | {ratio(f'packed, {mode}', f'unpacked, {mode}')} |")
    for packing in ("unpacked", "packed"):
        print(f"| subset SD / per-sample DropPath, {packing} | "
              f"{ratio(f'{packing}, subset SD', f'{packing}, per-sample DropPath')} |")  # fmt: skip
    if device.type == "cpu":
        print("\n| block-diagonal attention kernel (one layer, fwd+bwd) | ms (wall) | CPU ms |")
        print("|---|---:|---:|")
        for label, wall_ms, cpu_ms in bench_kernels(args):
            print(f"| {label} | {wall_ms:.1f} | {cpu_ms:.1f} |")


if __name__ == "__main__":
    main()

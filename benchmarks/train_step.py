"""Throughput and peak memory of one full SSL training step per ViT preset.

A step is what the training loop does: teacher forward on the global crops, packed student
forward on global + local crops, DINO + iBOT + KoLeo, backward, AdamW, teacher EMA. Each
configuration runs in a fresh process so its peak memory is its own. Rows compare the default
(packed crops, subset stochastic depth) with packing off, efficient stochastic depth off, and
both off. Images per CPU-second of the process are reported next to wall-clock images/s, since
wall time on a shared machine says more about the neighbours than about the code.

    python -m benchmarks.train_step                 # CPU presets (pico, tiny, small at batch 2)
    python -m benchmarks.train_step --preset vit_small --batch 4 --steps 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import torch

VARIANTS = {
    "packed + subset drop-path": dict(pack_crops=True, efficient_drop_path=True),
    "unpacked + subset drop-path": dict(pack_crops=False, efficient_drop_path=True),
    "packed + per-sample drop-path": dict(pack_crops=True, efficient_drop_path=False),
    "unpacked + per-sample drop-path": dict(pack_crops=False, efficient_drop_path=False),
}

CASES = {
    # preset: (global px, local px, n local, batch, prototypes, head hidden)
    "vit_pico": (56, 28, 4, 32, 1024, 512),
    "vit_tiny": (112, 56, 8, 8, 4096, 1024),
    "vit_small": (224, 98, 8, 2, 65536, 2048),
}


def _config(preset: str, variant: dict, batch: int, drop_path: float):
    from tasks.train.config import TrainConfig

    g, l, nl, _, k, hidden = CASES[preset]
    return TrainConfig.model_validate(
        dict(
            model=dict(arch=preset, patch_size=14, drop_path_rate=drop_path, **variant),
            crops=dict(global_crops_size=g, local_crops_size=l, local_crops_number=nl),
            loss=dict(dino_prototypes=k, head_hidden_dim=hidden),
            optim=dict(batch_size_per_rank=batch),
        )
    )


def _synthetic_batch(cfg, seed: int = 0) -> dict:
    from PIL import Image

    from tasks.train.build import build_augmentation, build_collate

    g = torch.Generator().manual_seed(seed)
    aug, collate = build_augmentation(cfg), build_collate(cfg)
    images = [
        Image.fromarray((torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy())
        for _ in range(cfg.optim.batch_size_per_rank)
    ]
    return collate([aug(im, g) for im in images], g)


def _measure(preset: str, variant_name: str, batch: int, steps: int, drop_path: float, threads: int, out):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from models.schedules import build_param_groups
    from tasks.train.build import build_ssl

    cfg = _config(preset, VARIANTS[variant_name], batch, drop_path)
    model = build_ssl(cfg).train()
    groups = build_param_groups(model.student)
    for g in groups:
        g.pop("param_names")
    opt = torch.optim.AdamW(groups, lr=1e-4)
    batch_data = _synthetic_batch(cfg)

    def step():
        out_ = model.forward_losses(batch_data, 0.04)
        opt.zero_grad(set_to_none=True)
        out_["total"].backward()
        opt.step()
        model.update_teacher(0.99)

    step()  # warm-up (allocator, first-call overheads)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    n_images = batch * steps
    out.put(
        dict(
            preset=preset,
            variant=variant_name,
            batch=batch,
            images_per_s=n_images / wall,
            images_per_cpu_s=n_images / cpu,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            global_px=cfg.crops.global_crops_size,
            local_px=cfg.crops.local_crops_size,
            n_local=cfg.crops.local_crops_number,
        )
    )


def run_case(preset: str, variant: str, batch: int, steps: int, drop_path: float, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(preset, variant, batch, steps, drop_path, threads, q))
    p.start()
    result = q.get()
    p.join()
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", action="append", choices=sorted(CASES), help="presets to run (default: all)")
    ap.add_argument("--batch", type=int, help="images per step (default: per preset)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--drop-path", type=float, default=0.4, help="student stochastic depth rate")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", action="store_true", help="print rows as JSON lines too")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, device cpu, dtype float32, threads {args.threads}, drop-path {args.drop_path}")
    print("| preset | batch | crops | variant | images/s (wall) | images per CPU-s | vs default (CPU) | peak RSS MB |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for preset in args.preset or list(CASES):
        batch = args.batch or CASES[preset][3]
        base = None
        for variant in VARIANTS:
            r = run_case(preset, variant, batch, args.steps, args.drop_path, args.threads)
            base = base or r["images_per_cpu_s"]
            crops = f"2x{r['global_px']} + {r['n_local']}x{r['local_px']}"
            print(
                f"| {preset} | {batch} | {crops} | {variant} | {r['images_per_s']:.2f} | "
                f"{r['images_per_cpu_s']:.2f} | {r['images_per_cpu_s'] / base:.2f}x | {r['peak_rss_mb']:.0f} |",
                flush=True,
            )
            if args.json:
                print(json.dumps(r))


if __name__ == "__main__":
    main()

"""Cost of a training step in the high-resolution adaptation phase against a base step.

The phase trains on larger global crops (DINOv2: 518 px instead of 224) with positional
embeddings interpolated from the base grid. Per preset this runs the full SSL step (teacher
forward, packed student forward, DINO + iBOT + KoLeo, backward, AdamW, EMA) at the base and at the
phase's crop sizes, each at two batch sizes in a fresh process, and reports CPU time per image and
the peak-memory slope per image (the difference between the two batch sizes), which is what a
smaller ``high_res.batch_size_per_rank`` has to absorb.

    python -m benchmarks.high_res_step                    # vit_pico (cpu-tiny sizes) and vit_small
    python -m benchmarks.high_res_step --preset vit_pico
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import resource
import time

import torch

CASES = {
    # preset: (base global px, high-res global px, local px, n local, (batch a, batch b), prototypes, head hidden)
    "vit_pico": (56, 112, 28, 4, (16, 32), 256, 512),
    "vit_small": (224, 518, 98, 8, (2, 4), 65536, 2048),
}


def _config(preset: str, global_px: int, batch: int):
    from tasks.train.config import TrainConfig

    _, _, local_px, n_local, _, k, hidden = CASES[preset]
    return TrainConfig.model_validate(
        dict(
            model=dict(arch=preset, patch_size=14, drop_path_rate=0.1),
            crops=dict(global_crops_size=global_px, local_crops_size=local_px, local_crops_number=n_local),
            loss=dict(dino_prototypes=k, head_hidden_dim=hidden),
            optim=dict(batch_size_per_rank=batch),
        )
    )


def _measure(preset: str, global_px: int, batch: int, steps: int, threads: int, out) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from benchmarks.train_step import _synthetic_batch
    from models.schedules import build_param_groups
    from tasks.train.build import build_ssl

    base_px = CASES[preset][0]
    model = build_ssl(_config(preset, base_px, batch)).train()  # positional table at the base grid
    groups = build_param_groups(model.student)
    for g in groups:
        g.pop("param_names")
    opt = torch.optim.AdamW(groups, lr=1e-4)
    data = _synthetic_batch(_config(preset, global_px, batch))

    def step():
        losses = model.forward_losses(data, 0.04)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        model.update_teacher(0.99)

    step()
    cpu0 = time.process_time()
    for _ in range(steps):
        step()
    cpu = time.process_time() - cpu0
    out.put(dict(cpu_s_per_image=cpu / (steps * batch), peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def run_case(preset: str, global_px: int, batch: int, steps: int, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(preset, global_px, batch, steps, threads, q))
    p.start()
    while True:
        try:
            result = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"{preset} at {global_px} px, batch {batch}: the measuring process exited {p.exitcode}")
    p.join()
    return result


def tokens_per_image(global_px: int, local_px: int, n_local: int, patch: int = 14) -> int:
    return 2 * (1 + (global_px // patch) ** 2) + n_local * (1 + (local_px // patch) ** 2)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", action="append", choices=sorted(CASES), help="presets to run (default: all)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, device cpu, float32, threads {args.threads}")
    print("| preset | crops | tokens per image | CPU ms per image | memory per image (MB) | vs base: time | vs base: memory |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for preset in args.preset or list(CASES):
        base_px, high_px, local_px, n_local, (b1, b2), _, _ = CASES[preset]
        base = None
        for px in (base_px, high_px):
            r1, r2 = (run_case(preset, px, b, args.steps, args.threads) for b in (b1, b2))
            per_image_mb = (r2["peak_rss_mb"] - r1["peak_rss_mb"]) / (b2 - b1)
            cpu = r2["cpu_s_per_image"]
            base = base or (cpu, per_image_mb)
            print(
                f"| {preset} | 2x{px} + {n_local}x{local_px} | {tokens_per_image(px, local_px, n_local)} | {1000 * cpu:.1f} "
                f"| {per_image_mb:.1f} | {cpu / base[0]:.2f}x | {per_image_mb / base[1]:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()

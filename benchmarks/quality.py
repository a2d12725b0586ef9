"""Feature quality at equal budget: this project's DINOv2 vs the `lightly` package's DINO.

Same data (a class-balanced Fashion-MNIST train subset, written once as PNG files that both read),
same backbone size (ViT 64 wide, 4 blocks, 2 heads; by default patch 7 on the native 28 px images,
28 px global and 14 px local crops, so 4x4 / 2x2 patches), the same crops and colour operations
(ours are the ``cpu-tiny`` preset's; the peer is given the same scales and probabilities), and the
same CPU budget (CPU seconds of one thread, counted with getrusage, children included, so a busy
machine does not change the budget). Each side measures its CPU time per step and lays its
schedules over the steps that fit. k-NN top-1 (DINOv2 protocol: EMA teacher, cosine, T=0.07) with
the training subset as reference, next to raw pixels and the same ViT at random initialisation.
The k-NN feature is the same rule for every ViT row: ``cls`` or ``cls+avgpool`` (the CLS token and
the mean patch token, each L2-normalised, concatenated; the DINOv2 linear-probe feature).

Settings are chosen with ``--eval-split val`` (2,000 held-out train images, disjoint from the
training subset); the test split is for the reported numbers only:

    python -m benchmarks.quality --cpu-budget 900

The lightly side runs in its own venv (lightly needs torchvision; see benchmarks/quality_lightly.py):
``python -m venv /tmp/lightly-venv && /tmp/lightly-venv/bin/pip install lightly torch torchvision`` (PyPI;
it runs on the CPU, one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tasks.datasets import fashion_mnist
from tasks.datasets.tensors import uint8_to_input
from tasks.evaluate.knn import knn_accuracy

KS = (10, 20)
# The benchmark's settings (chosen with --eval-split val, see benchmarks/RESULTS.md).
BUDGET = 900.0
PATCH, GLOBAL_SIZE, LOCAL_SIZE, N_LOCAL = 7, 28, 14, 4
FEATURE = "cls+avgpool"
# Over the cpu-tiny train preset: changes that did better on the held-out split (RESULTS.md).
RECIPE: dict = {"optim": {"momentum_teacher": 0.99}}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def write_images(images: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) == len(images):
        return
    for i, img in enumerate(images):
        Image.fromarray(img, mode="L").save(folder / f"{i:06d}.png")


def our_config(source: str, total_steps: int, args: argparse.Namespace):
    """The ``cpu-tiny`` train preset with RECIPE on ``source``, at the benchmark's backbone and crop sizes."""
    from flows.config import PipelineConfig
    from lvd.config import load_config
    from tasks.train.config import TrainConfig, _deep_merge

    cfg = load_config(PipelineConfig, "cpu-tiny").train
    update = {
        "model": {"patch_size": args.patch_size},
        "crops": {"global_crops_size": args.global_size, "local_crops_size": args.local_size,
                  "local_crops_number": args.n_local},
        "data": {"source": source, "kind": "image_folder", "num_workers": 0},
        "eval": {"knn_dataset": "none"},
        "optim": {"total_steps": total_steps},
        "checkpoint": {"every_steps": total_steps, "keep": 1},
        "cpu_threads": 1,
    }
    merged = _deep_merge(_deep_merge(cfg.model_dump(), RECIPE), update)
    return TrainConfig.model_validate(_deep_merge(merged, json.loads(args.train_override)))


def peer_augmentation(cfg) -> list[str]:
    """quality_lightly.py arguments that give the peer the crops and colour operations ours trains with."""
    blur = (1.0, 0.1, 0.5) if cfg.crops.blur == "paper" else (0.0, 0.9, 0.5)
    c = cfg.crops
    return ["--global-scale", *map(str, c.global_crops_scale), "--local-scale", *map(str, c.local_crops_scale),
            "--jitter-p", str(c.color_jitter_p), "--blur-p", *map(str, blur), "--solarize-p", str(c.solarize_p)]


class BudgetSpent(Exception):
    """Raised before a step once the CPU budget is spent."""


def train_ours(source: str, out: Path, budget: float, args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """Calibrate CPU seconds per step, lay the schedules over the steps that fit in ``budget``, and stop
    at 1.05 x ``budget`` as the peer does (a busy machine makes steps dearer than calibrated); the
    run checkpoints every few steps, and the newest checkpoint is the model."""
    from storage import uri as su
    from tasks.release.load import load_model
    from tasks.train.loop import train

    torch.set_num_threads(1)
    for stale in ("calibrate", "run"):  # a run directory resumes its checkpoint: start both afresh
        shutil.rmtree(out / stale, ignore_errors=True)
    marks: list[float] = []
    train(our_config(source, 200, args), f"file://{out}/calibrate", stop_at_step=8,
          before_step=lambda step, batch: marks.append(cpu_seconds()), log=lambda m: None)
    per_step = (marks[-1] - marks[0]) / (len(marks) - 1)
    total = max(4, int(budget / per_step))
    cfg = our_config(source, total, args)
    cfg = cfg.model_copy(update={"checkpoint": cfg.checkpoint.model_copy(update={"every_steps": 25, "keep": 1})})
    run_uri = f"file://{out}/run"
    su.write_bytes_atomic(su.join(run_uri, "config.json"), cfg.model_dump_json(indent=1).encode())
    start = cpu_seconds()

    def guard(step: int, batch: dict) -> None:
        if cpu_seconds() - start > 1.05 * budget:
            raise BudgetSpent

    try:
        summary = train(cfg, run_uri, before_step=guard, log=lambda m: None)
        final = summary["final"].get("dino_loss")
    except BudgetSpent:
        final = None
    spent = cpu_seconds() - start
    model = load_model(run_uri)
    return model.backbone.eval(), {"steps": model.step, "planned_steps": total, "cpu_seconds": spent,
                                   "final_dino_loss": final}


@torch.no_grad()
def vit_features(backbone: torch.nn.Module, images: np.ndarray, size: int, rule: str = "cls") -> torch.Tensor:
    """k-NN features: the CLS token, or (``cls+avgpool``) CLS and the mean patch token, each L2-normalised."""
    backbone.eval()
    x = uint8_to_input(images, size)
    out = []
    for s in range(0, len(x), 256):
        o = backbone.forward_features(x[s : s + 256])
        f = F.normalize(o["x_norm_clstoken"].float(), dim=1)
        if rule == "cls+avgpool":
            f = torch.cat([f, F.normalize(o["x_norm_patchtokens"].float().mean(1), dim=1)], dim=1)
        out.append(f)
    return torch.cat(out)


def splits(train_size: int, eval_size: int, eval_split: str):
    """The training subset and the labelled query set: the test split, or (``val``) held-out train images.

    The validation images are the next ``eval_size / 10`` images of each class in the same seeded
    per-class order that picks the training subset, so they never overlap it.
    """
    full = fashion_mnist.load("train")
    train = full.subset(train_size, seed=0)
    if eval_split == "test":
        return train, fashion_mnist.load("test").subset(eval_size, seed=0)
    bigger = full.subset(train_size + eval_size, seed=0)
    seen = {img.tobytes() for img in train.images}
    keep = np.array([img.tobytes() not in seen for img in bigger.images])
    return train, type(bigger)(bigger.images[keep], bigger.labels[keep])


def pixels(images: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(images).float().flatten(1)
    return F.normalize(x - x.mean(1, keepdim=True), dim=1)


def knn_row(name: str, train_f, test_f, train_y, test_y, extra: dict | None = None) -> dict:
    acc = knn_accuracy(train_f, train_y, test_f, test_y, KS, 0.07, 10)
    return {"method": name, **{f"k={k}": acc[k] for k in KS}, **(extra or {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--eval-split", choices=("test", "val"), default="test",
                        help="query images: the test split, or held-out train images (for choosing settings)")
    parser.add_argument("--cpu-budget", type=float, default=BUDGET, help="CPU seconds of training per method")
    parser.add_argument("--patch-size", type=int, default=PATCH)
    parser.add_argument("--global-size", type=int, default=GLOBAL_SIZE, help="global crop and evaluation side (px)")
    parser.add_argument("--local-size", type=int, default=LOCAL_SIZE)
    parser.add_argument("--n-local", type=int, default=N_LOCAL)
    parser.add_argument("--feature", choices=("cls", "cls+avgpool"), default=FEATURE,
                        help="k-NN feature of every ViT row (ours, random init, the peer)")
    parser.add_argument("--train-override", default="{}",
                        help="JSON merged into our train config last, e.g. '{\"optim\": {\"momentum_teacher\": 0.99}}'")
    parser.add_argument("--lightly-python", default="/tmp/lightly-venv/bin/python",
                        help="interpreter of a venv holding lightly + torchvision ('' skips the peer)")
    parser.add_argument("--out", default="/tmp/lvd-quality")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = splits(args.train_size, args.test_size, args.eval_split)
    write_images(train.images, out / "images")
    np.savez(out / "eval.npz", train=train.images, test=test.images)
    y_train, y_test = torch.as_tensor(train.labels), torch.as_tensor(test.labels)
    source = str(out / "images")

    peer = None
    if args.lightly_python:
        cmd = [args.lightly_python, str(Path(__file__).with_name("quality_lightly.py")), "--images", source,
               "--eval", str(out / "eval.npz"), "--out", str(out / "lightly.npz"), "--cpu-budget", str(args.cpu_budget),
               "--patch-size", str(args.patch_size), "--global-size", str(args.global_size),
               "--local-size", str(args.local_size), "--n-local", str(args.n_local), "--feature", args.feature,
               *peer_augmentation(our_config(source, 1, args))]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        peer = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**env, "OMP_NUM_THREADS": "1"})

    t0 = time.time()
    ours, info = train_ours(source, out, args.cpu_budget, args)

    def features(model):
        return vit_features(model, train.images, args.global_size, args.feature), \
            vit_features(model, test.images, args.global_size, args.feature)

    rows = [knn_row("lvd DINOv2 (this project)", *features(ours), y_train, y_test, info)]
    from tasks.train.build import build_backbone

    torch.manual_seed(0)
    rand = build_backbone(our_config(source, 1, args))  # the trained architecture, LayerScale setting included
    rows.append(knn_row("random init (same ViT)", *features(rand), y_train, y_test))
    rows.append(knn_row("raw pixels (28x28)", pixels(train.images), pixels(test.images), y_train, y_test))
    if peer is not None:
        stdout, _ = peer.communicate()
        if peer.returncode != 0:
            raise SystemExit(f"lightly run failed with {peer.returncode}")
        peer_info = json.loads(stdout.strip().splitlines()[-1])
        feats = np.load(out / "lightly.npz")
        rows.append(knn_row("lightly DINO", F.normalize(torch.as_tensor(feats["train"]), dim=1),
                            F.normalize(torch.as_tensor(feats["test"]), dim=1), y_train, y_test, peer_info))
    print(f"# Fashion-MNIST k-NN top-1 ({args.feature}), train {args.train_size} / {args.eval_split} "
          f"{args.test_size}, ViT patch {args.patch_size} at {args.global_size}/{args.local_size} px, "
          f"CPU budget {args.cpu_budget:.0f} s per method, wall {time.time() - t0:.0f} s\n")
    print("| method | k=10 | k=20 | steps | CPU s |")
    print("|---|---|---|---|---|")
    for r in rows:
        steps, cpu = r.get("steps", "-"), r.get("cpu_seconds")
        print(f"| {r['method']} | {100 * r['k=10']:.1f} | {100 * r['k=20']:.1f} | {steps} | "
              f"{f'{cpu:.0f}' if cpu is not None else '-'} |")
    (out / f"results-{args.eval_split}-{args.cpu_budget:.0f}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())

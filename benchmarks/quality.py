"""Feature quality at equal budget: this project's DINOv2 vs the `lightly` package's DINO.

Same data (a class-balanced Fashion-MNIST train subset, written once as PNG files that both read),
same backbone size (ViT 64 wide, 4 blocks, 2 heads, patch 14; 56 px global and 28 px local crops),
same CPU budget (CPU seconds of one thread, counted with getrusage, children included, so a busy
machine does not change the budget). Each side measures its CPU time per step and lays its
schedules over the steps that fit. k-NN top-1 (DINOv2 protocol: CLS of the EMA teacher, cosine,
T=0.07) on a Fashion-MNIST test subset with the training subset as reference, next to raw pixels
and the same ViT at random initialisation.

    python -m benchmarks.quality --cpu-budget 300 --lightly-python /tmp/lightly-venv/bin/python

The lightly side runs in its own venv (lightly needs torchvision; see benchmarks/quality_lightly.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def our_config(source: str, total_steps: int):
    from flows.config import PipelineConfig
    from lvd.config import load_config

    cfg = load_config(PipelineConfig, "cpu-tiny").train
    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"source": source, "kind": "image_folder", "num_workers": 0}),
        "eval": cfg.eval.model_copy(update={"knn_dataset": "none"}),
        "optim": cfg.optim.model_copy(update={"total_steps": total_steps}),
        "checkpoint": cfg.checkpoint.model_copy(update={"every_steps": total_steps, "keep": 1}),
        "cpu_threads": 1,
    })


def train_ours(source: str, out: Path, budget: float) -> tuple[torch.nn.Module, dict]:
    """Calibrate CPU seconds per step, then train the steps that fit in ``budget``."""
    import lvd
    from tasks.train.loop import train
    from tasks.train.run import run_training

    torch.set_num_threads(1)
    marks: list[float] = []
    train(our_config(source, 200), f"file://{out}/calibrate", stop_at_step=4,
          before_step=lambda step, batch: marks.append(cpu_seconds()), log=lambda m: None)
    per_step = (marks[-1] - marks[0]) / (len(marks) - 1)
    total = max(4, int(budget / per_step))
    start = cpu_seconds()
    summary = run_training(our_config(source, total), f"file://{out}/run", log=lambda m: None)
    spent = cpu_seconds() - start
    return lvd.load(f"file://{out}/run"), {"steps": summary["steps"], "cpu_seconds": spent,
                                           "final_dino_loss": summary["final"].get("dino_loss")}


@torch.no_grad()
def vit_cls(backbone: torch.nn.Module, images: np.ndarray, size: int = 56) -> torch.Tensor:
    backbone.eval()
    x = uint8_to_input(images, size)
    out = [backbone.forward_features(x[s : s + 256])["x_norm_clstoken"] for s in range(0, len(x), 256)]
    return F.normalize(torch.cat(out).float(), dim=1)


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
    parser.add_argument("--cpu-budget", type=float, default=300.0, help="CPU seconds of training per method")
    parser.add_argument("--lightly-python", default="/tmp/lightly-venv/bin/python",
                        help="interpreter of a venv holding lightly + torchvision ('' skips the peer)")
    parser.add_argument("--out", default="/tmp/lvd-quality")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = fashion_mnist.load("train").subset(args.train_size, seed=0)
    test = fashion_mnist.load("test").subset(args.test_size, seed=0)
    write_images(train.images, out / "images")
    np.savez(out / "eval.npz", train=train.images, test=test.images)
    y_train, y_test = torch.as_tensor(train.labels), torch.as_tensor(test.labels)

    peer = None
    if args.lightly_python:
        cmd = [args.lightly_python, str(Path(__file__).with_name("quality_lightly.py")), "--images", str(out / "images"),
               "--eval", str(out / "eval.npz"), "--out", str(out / "lightly.npz"), "--cpu-budget", str(args.cpu_budget)]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        peer = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**env, "OMP_NUM_THREADS": "1"})

    t0 = time.time()
    ours, info = train_ours(str(out / "images"), out, args.cpu_budget)
    rows = [knn_row("lvd DINOv2 (this project)", vit_cls(ours, train.images), vit_cls(ours, test.images),
                    y_train, y_test, info)]
    from tasks.train.build import build_backbone

    torch.manual_seed(0)
    rand = build_backbone(our_config(str(out / "images"), 1))  # the trained architecture, LayerScale setting included
    rows.append(knn_row("random init (same ViT)", vit_cls(rand, train.images), vit_cls(rand, test.images),
                        y_train, y_test))
    rows.append(knn_row("raw pixels (28x28)", pixels(train.images), pixels(test.images), y_train, y_test))
    if peer is not None:
        stdout, _ = peer.communicate()
        if peer.returncode != 0:
            raise SystemExit(f"lightly run failed with {peer.returncode}")
        peer_info = json.loads(stdout.strip().splitlines()[-1])
        feats = np.load(out / "lightly.npz")
        rows.append(knn_row("lightly DINO", F.normalize(torch.as_tensor(feats["train"]), dim=1),
                            F.normalize(torch.as_tensor(feats["test"]), dim=1), y_train, y_test, peer_info))
    print(f"# Fashion-MNIST k-NN top-1, train {args.train_size} / test {args.test_size}, "
          f"CPU budget {args.cpu_budget:.0f} s per method, wall {time.time() - t0:.0f} s\n")
    print("| method | k=10 | k=20 | steps | CPU s |")
    print("|---|---|---|---|---|")
    for r in rows:
        steps, cpu = r.get("steps", "-"), r.get("cpu_seconds")
        print(f"| {r['method']} | {100 * r['k=10']:.1f} | {100 * r['k=20']:.1f} | {steps} | "
              f"{f'{cpu:.0f}' if cpu is not None else '-'} |")
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())

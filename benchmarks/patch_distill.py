"""Patch matching of the demo's trained model against its random init, and distillation from a
released-format (headless) copy of that model.

    python benchmarks/patch_distill.py [--root DIR] [--distill-steps 100]

1. trains the cpu-tiny preset's model (its train section as it stands, k-NN off) unless the run exists;
2. evaluate-dinov2 patch matching (planted flip / crop / rescale copies of the packaged photos) for
   the trained model and the same architecture at random init, at 112 and 224 px;
3. saves the trained backbone as an official DINOv2 state dict (no heads) and distils it into a
   vit_pico student with the cpu-tiny distill section (features targets, chosen automatically),
   printing the loss/cosine trajectory and k-NN top-1 of teacher and student on Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pyarrow.parquet as pq
import torch

import lvd
from flows.config import PipelineConfig
from lvd.config import load_config
from models.official_weights import project_to_official
from tasks.distill.loop import distill
from tasks.evaluate.config import EvaluateConfig, EvalSetConfig
from tasks.evaluate.run import evaluate
from tasks.train.run import run_training


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/lvd-patch-distill")
    ap.add_argument("--distill-steps", type=int, default=100)
    ap.add_argument("--skip-patch-matching", action="store_true")
    ap.add_argument("--targets", choices=["features", "heads"], default="features",
                    help="features: distil the headless official-format file; heads: the run itself, with its heads "
                    "(the paper's recipe, for comparison)")
    args = ap.parse_args()
    root = f"file://{args.root}"
    cfg = load_config(PipelineConfig, "cpu-tiny", ["train.eval.knn_dataset=none", f"storage.root={root}"])
    run = f"{root}/runs/demo-train"
    t0 = time.perf_counter()
    if not os.path.exists(f"{args.root}/runs/demo-train/summary.json"):
        summary = run_training(cfg.train, run, log=lambda m: None)
        print(f"trained {summary['steps']} steps in {time.perf_counter() - t0:.0f} s, final {summary['final']}")

    for size in () if args.skip_patch_matching else (112, 224):
        ecfg = EvaluateConfig(models=[run], baselines=[f"random:{run}"],
                              datasets=[EvalSetConfig(train_size=100, test_size=50)], image_size=56,
                              knn=dict(enabled=False), linear=dict(enabled=False), pca=dict(enabled=False),
                              patch_match=dict(edits=("identity", "flip", "crop", "rescale"), n_images=4,
                                               image_size=size), device="cpu")
        out = evaluate(ecfg, f"{root}/runs/patch-match-{size}", log=lambda m: None)
        for row in out["table"]:
            cells = {k.split("/")[1]: v for k, v in row.items() if k.startswith("patch-pairs/")}
            print(f"patch matching {size} px | {row['model']} | " + " | ".join(f"{k}={v:.3f}" for k, v in cells.items()))
        print("pictures:", out["match_pictures"])

    official = f"{args.root}/dinov2_vitpico14_pretrain.pth"
    torch.save(project_to_official(lvd.load(run)), official)
    teacher = official if args.targets == "features" else run
    dcfg = load_config(PipelineConfig, "cpu-tiny", [f"distill.teacher.uri={teacher}",
                                                    f"distill.optim.total_steps={args.distill_steps}",
                                                    "distill.eval.knn_every_steps=0"]).distill
    student = f"{root}/runs/demo-distill-{args.targets}"
    t1 = time.perf_counter()
    summary = distill(dcfg, student, log=lambda m: None)
    rows = pq.read_table(f"{args.root}/runs/demo-distill-{args.targets}/metrics.parquet").to_pylist()
    rows = [r for r in rows if r.get("total_loss") is not None]
    keys = ("total_loss", "cls_loss", "patch_loss", "cls_cosine", "patch_cosine", "dino_loss", "ibot_loss")
    for r in rows[:1] + rows[len(rows) // 2 : len(rows) // 2 + 1] + rows[-1:]:
        print(f"distill step {r['step']}: " + " ".join(f"{k}={r[k]:.4f}" for k in keys if r.get(k) is not None))
    print(f"distilled {summary['steps']} steps in {time.perf_counter() - t1:.0f} s; targets "
          f"{summary['teacher']['targets']}")
    print("teacher k-NN", json.dumps(summary["teacher_knn"]))
    print("student k-NN", json.dumps(summary["knn"]))


if __name__ == "__main__":
    main()

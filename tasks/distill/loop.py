"""The distillation loop: one process (CPU or one GPU), resumable, in the training run layout.

It reuses the training building blocks (data stream, augmentation, collate, parameter groups,
schedules, DCP checkpoints, metrics, k-NN). The saved model is an ``SSLMetaArch`` of the student
whose ``teacher`` half is the student's EMA, and the run's ``config.json`` describes the student,
so ``lvd.load``, evaluate-dinov2 and train-dinov2 (to continue self-supervised) read the result
like any training run. The frozen teacher is not saved: ``distill.json`` names it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from models.schedules import apply_step, build_param_groups, build_schedules
from storage import uri as su
from tasks.distill.config import DistillConfig
from tasks.distill.objective import distill_losses
from tasks.distill.teacher import check_pair, load_teacher, move_teacher, student_train_config
from tasks.train.build import build_augmentation, build_collate, build_ssl
from tasks.train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from tasks.train.data import ResumableLoader, open_source
from tasks.train.loop import NonFiniteLossError, build_knn_benchmark, compute_dtype, run_knn
from tasks.train.metrics import MetricsLog, peak_memory_mb


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare(cfg: DistillConfig):
    """Teacher, student config and student model, every check done: nothing has been trained yet."""
    teacher = load_teacher(cfg)
    tcfg = student_train_config(cfg, teacher)
    torch.manual_seed(cfg.seed)
    model = build_ssl(tcfg)
    check_pair(cfg, teacher, model.student["backbone"])
    # The student always sees every patch, so its mask token never gets a gradient; frozen, it has no
    # optimizer state that a resumed run would look for in the checkpoint.
    for part in (model.student, model.teacher):
        part["backbone"].mask_token.requires_grad_(False)
    return teacher, tcfg, model


def distill(cfg: DistillConfig, run_uri: str, *, stop_at_step: int | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Distill (or resume distilling) into ``run_uri``; returns the run summary."""
    teacher, tcfg, model = prepare(cfg)
    device = _device(cfg.device)
    dtype = compute_dtype(tcfg, device)
    if device.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    su.write_bytes_atomic(su.join(run_uri, "config.json"), tcfg.model_dump_json(indent=1).encode())
    su.write_bytes_atomic(su.join(run_uri, "distill.json"), cfg.model_dump_json(indent=1).encode())
    model.to(device).train()
    move_teacher(teacher, device)
    torch.manual_seed(cfg.seed + 7919)

    groups = build_param_groups(model.student, layer_decay=cfg.optim.layerwise_decay,
                                patch_embed_lr_mult=cfg.optim.patch_embed_lr_mult)
    for g in groups:
        g.pop("param_names", None)
    o = cfg.optim
    optimizer = torch.optim.AdamW(groups, betas=(o.adamw_beta1, o.adamw_beta2))
    total = o.total_steps
    schedules = build_schedules(
        total, lr=tcfg.peak_lr(1), min_lr=o.min_lr, lr_warmup=o.warmup_fraction, weight_decay=o.weight_decay,
        weight_decay_end=o.weight_decay_end, momentum=o.momentum_teacher, momentum_end=o.momentum_teacher_end,
        teacher_temp=o.teacher_temp, teacher_temp_start=o.warmup_teacher_temp,
        teacher_temp_warmup=o.warmup_teacher_temp_fraction, freeze_last_layer=o.freeze_last_layer_fraction,
    )

    metrics = MetricsLog(su.join(run_uri, "metrics.parquet"))
    step, data_state = 0, None
    ref = latest_checkpoint(run_uri)
    if ref is not None:
        extra = load_checkpoint(ref, model, optimizer)
        step = ref.step
        if extra is not None:
            data_state = extra["data"]
            set_rng_state(extra["rng"])
        metrics.resume(step)
        log(f"resumed from {ref.uri} at step {step}")

    loader = ResumableLoader(open_source(cfg.data.source, cfg.data.kind), build_augmentation(tcfg),
                             build_collate(tcfg), o.batch_size_per_rank, cfg.seed, 0, 1, cfg.data.num_workers,
                             state=data_state)
    bench = build_knn_benchmark(tcfg)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    teacher_knn: dict[str, float] = {}
    if bench is not None:
        from tasks.evaluate.knn import KnnBenchmark, evaluate_knn

        moved = KnnBenchmark(bench.train_inputs.to(device), bench.train_labels.to(device),
                             bench.test_inputs.to(device), bench.test_labels.to(device), bench.num_classes)
        with autocast:
            teacher_knn = evaluate_knn(teacher.backbone, moved, tcfg.eval.knn_ks, tcfg.eval.knn_temperature)
        log("teacher: " + ", ".join(f"{k}={v:.4f}" for k, v in teacher_knn.items()))

    last_ckpt = ref.uri if ref is not None else None
    knn_results = {r["step"]: {k: v for k, v in r.items() if k.startswith(("knn_", "feature_")) and v is not None}
                   for r in metrics.rows if any(k.startswith("knn_") and v is not None for k, v in r.items())}
    while step < total:
        sched = schedules.at(step)
        apply_step(optimizer, sched["lr"], sched["weight_decay"], sched["last_layer_lr"])
        t0 = time.perf_counter()
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in next(loader).items()}
        with autocast:
            out = distill_losses(model, teacher, batch, sched["teacher_temp"], cfg.loss.ibot_patches)
        terms = {k: float(v) for k, v in out.items() if k != "total"}
        terms["total_loss"] = float(out["total"].detach())
        if not all(math.isfinite(v) for v in terms.values()):
            metrics.flush()
            raise NonFiniteLossError(f"non-finite loss at step {step + 1}: {terms}; last good checkpoint: {last_ckpt}")
        optimizer.zero_grad(set_to_none=True)
        out["total"].backward()
        norms = {}
        if o.clip_grad > 0:
            for name, module in model.student.items():
                norms[f"grad_norm_{name}"] = float(torch.nn.utils.clip_grad_norm_(module.parameters(), o.clip_grad))
        optimizer.step()
        model.update_teacher(sched["momentum"])
        step += 1
        elapsed = time.perf_counter() - t0
        row = {"step": step, **terms, **sched, **norms, "step_time_s": elapsed,
               "images_per_s": o.batch_size_per_rank / elapsed, "memory_mb": peak_memory_mb(device)}
        eval_now = bench is not None and (step == total or (cfg.eval.knn_every_steps and step % cfg.eval.knn_every_steps == 0))
        if eval_now:
            with autocast:
                knn_results[step] = run_knn(model, bench, tcfg, device, dtype)
            row.update(knn_results[step])
        if step % cfg.log_every_steps == 0 or eval_now or step == total:
            metrics.append(row)
        if step % max(1, cfg.log_every_steps * 10) == 0 or step == total:
            log(f"step {step}/{total} total={terms['total_loss']:.4f} dino={terms.get('dino_loss', 0):.4f} "
                f"ibot={terms.get('ibot_loss', 0):.4f} koleo={terms.get('koleo_loss', 0):.4f}")
        if step % cfg.checkpoint.every_steps == 0 or step == total:
            extra = {"step": step, "data": loader.state_dict(), "rng": rng_state()}
            last_ckpt = save_checkpoint(run_uri, step, model, optimizer, extra, keep=cfg.checkpoint.keep).uri
            metrics.flush()
        if stop_at_step is not None and step >= stop_at_step and step < total:
            metrics.flush()
            loader.close()
            return {"stopped_at": step, "checkpoint_uri": last_ckpt}

    loader.close()
    metrics.flush()
    rows = [r for r in metrics.rows if r.get("total_loss") is not None]
    tail = rows[-max(1, len(rows) // 5):]
    summary = {
        "run_uri": run_uri,
        "steps": step,
        "teacher": {"uri": cfg.teacher.uri, "model_id": teacher.model_id,
                    "params": sum(p.numel() for p in teacher.backbone.parameters())},
        "student": {"arch": cfg.student.arch, "params": sum(p.numel() for p in model.student["backbone"].parameters())},
        "final": {k: sum(r[k] for r in tail) / len(tail) for k in ("total_loss", "dino_loss", "ibot_loss", "koleo_loss")
                  if tail and all(r.get(k) is not None for r in tail)},
        "teacher_knn": teacher_knn,
        "knn": {str(s): v for s, v in sorted(knn_results.items())},
        "checkpoint_uri": last_ckpt,
        "metrics_uri": metrics.uri,
    }
    su.write_bytes_atomic(su.join(run_uri, "summary.json"), json.dumps(summary, indent=1).encode())
    return summary

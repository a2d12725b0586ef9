"""The training loop of lvd: one function that runs, checkpoints, evaluates and resumes a run of
any objective (:mod:`tasks.engine.objectives`: self-supervised pretraining, distillation).

Per step: schedules (LR warmup + cosine scaled by sqrt(batch/1024), weight decay cosine,
teacher EMA momentum cosine, teacher temperature warmup, frozen prototypes at first) are
written into the AdamW parameter groups (layer-wise decay, patch-embed multiplier); the
objective's loss is backpropagated, gradients are clipped per module, the optimiser steps and
the EMA teacher follows. A non-finite loss on any process stops the run before the
optimiser step, so the newest checkpoint on disk is always a good one. With ``high_res`` on, the
last steps run at larger crops (:mod:`tasks.train.phases`): the data stream continues where it
stands with the new augmentation and batch size, the model interpolates its positional
embeddings, and the schedules go on over the same step count.

The run directory holds ``checkpoints/step-*`` (see :mod:`tasks.train.checkpoint`; the data
position and phase in the marker), ``metrics.parquet`` and ``summary.json``. Running again on the
same run URI resumes from the newest good checkpoint and reproduces the uninterrupted run.
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
from tasks.engine.objectives import Objective
from tasks.train.build import build_augmentation, build_collate
from tasks.train.checkpoint import (
    load_checkpoint, load_newest_good, read_marker, rng_state, save_checkpoint, set_rng_state,
)
from tasks.train.config import TrainConfig
from tasks.train.data import mix_seed, open_source
from tasks.train.flags import run_flags, warn
from tasks.train.distributed import DistInfo, all_reduce_mean, barrier, init_distributed, shard_ssl_model, shutdown
from tasks.train.metrics import MetricsLog, peak_memory_mb
from tasks.train.global_batches import GlobalBatchLoader
from tasks.train.phases import Phase, check_resumed_phase, phase_at
from tasks.train.world import check_world
from lvd.errors import LvdError

BatchHook = Callable[[int, dict], None]


class NonFiniteLossError(LvdError, RuntimeError):
    """A loss term became NaN or infinite; the run stopped without stepping the optimiser."""


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _grad_norm(value: torch.Tensor) -> float:
    return float(value.full_tensor() if hasattr(value, "full_tensor") else value)


def _augmentation(objective: Objective, phase: Phase):
    """The objective's own augmentation where it has one, else the run's multi-crop augmentation."""
    own = getattr(objective, "augmentation", None)
    return own(phase) if own is not None else build_augmentation(objective.cfg, phase)


def build_knn_benchmark(cfg: TrainConfig):
    """Labelled reference/query sets for k-NN at the global crop resolution (None when disabled)."""
    if cfg.eval.knn_dataset == "none":
        return None
    from tasks.datasets import fashion_mnist
    from tasks.evaluate.knn import KnnBenchmark

    train = fashion_mnist.load("train").subset(cfg.eval.knn_train_size, seed=cfg.seed)
    test = fashion_mnist.load("test").subset(cfg.eval.knn_test_size, seed=cfg.seed)
    return KnnBenchmark.from_labelled(train, test, cfg.eval.image_size or cfg.crops.global_crops_size)


def run_knn(backbone, bench, cfg: TrainConfig, dtype: torch.dtype) -> dict[str, float]:
    """k-NN of a backbone (every process takes part, as FSDP needs)."""
    from tasks.evaluate.knn import evaluate_knn

    device = next(backbone.parameters()).device
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    with autocast:
        return evaluate_knn(backbone, bench, cfg.eval.knn_ks, cfg.eval.knn_temperature)


def build_optimizer(cfg, student: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW over the student's parameter groups (layer-wise LR decay, patch-embed multiplier, no
    decay on biases and norms, on tokens only with ``optim.decay_tokens``)."""
    o = cfg.optim
    groups = build_param_groups(student, layer_decay=o.layerwise_decay, patch_embed_lr_mult=o.patch_embed_lr_mult,
                                decay_tokens=o.decay_tokens)
    for g in groups:
        g.pop("param_names", None)
    return torch.optim.AdamW(groups, betas=(o.adamw_beta1, o.adamw_beta2))


def run_objective(
    objective: Objective,
    run_uri: str,
    *,
    stop_at_step: int | None = None,
    before_step: BatchHook | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) ``objective`` in ``run_uri``; returns the run summary.

    ``stop_at_step`` ends the call after that many steps as if the process had been killed
    (no final checkpoint); ``before_step(step, batch)`` may inspect or alter a batch.
    """
    info = init_distributed(objective.cfg.device)
    try:
        if info.world_size > 1 and not objective.distributed:
            raise ValueError(f"{objective.name} runs in one process, not {info.world_size}")
        return _run(objective, run_uri, info, stop_at_step, before_step, log)
    finally:
        shutdown(info)


def _run(objective: Objective, run_uri, info: DistInfo, stop_at_step, before_step, log) -> dict[str, Any]:
    cfg = objective.cfg
    device, dtype = info.device, compute_dtype(cfg, info.device)
    if device.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    total = cfg.optim.total_steps
    phases = check_world(cfg, info.world_size, run_uri)
    torch.manual_seed(cfg.seed)
    model = objective.build().to(device)
    objective.to(device)
    if info.distributed:
        shard_ssl_model(model, info, dtype if dtype != torch.float32 else None)
    model.train()
    if info.is_main:
        for name, data in objective.start_files().items():
            su.write_bytes_atomic(su.join(run_uri, name), data)
    torch.manual_seed(cfg.seed + 7919 * (info.rank + 1))

    optimizer = build_optimizer(cfg, model.student)
    o = cfg.optim
    schedules = build_schedules(
        total,
        lr=cfg.peak_lr(info.world_size),
        min_lr=o.min_lr,
        lr_warmup=o.warmup_fraction,
        weight_decay=o.weight_decay,
        weight_decay_end=o.weight_decay_end,
        momentum=o.teacher_momentum_start(),
        momentum_end=o.momentum_teacher_end,
        teacher_temp=o.teacher_temp,
        teacher_temp_start=o.warmup_teacher_temp,
        teacher_temp_warmup=o.warmup_teacher_temp_fraction,
        freeze_last_layer=o.freeze_last_layer_fraction,
    )

    plan = {**o.schedule_steps(), "momentum_teacher_start": o.teacher_momentum_start(),
            "high_res_steps": cfg.high_res.num_steps(total)}
    if info.is_main:
        log(f"schedules over {total} steps: LR warm-up {plan['lr_warmup_steps']} steps, teacher temperature "
            f"{o.warmup_teacher_temp:g} -> {o.teacher_temp:g} over {plan['teacher_temp_warmup_steps']} steps, "
            f"prototypes frozen {plan['freeze_last_layer_steps']} steps, teacher EMA "
            f"{plan['momentum_teacher_start']:.4f} -> {o.momentum_teacher_end:g}"
            + ("" if o.momentum_teacher is not None else f" (time constant {o.momentum_teacher_lag:g} of the run)")
            + (f", high resolution {plan['high_res_steps']} steps" if plan["high_res_steps"] else ""))

    metrics = MetricsLog(su.join(run_uri, "metrics.parquet"))
    step, data_state = 0, None
    def resume_from(ref):
        # The phase of the last step done; the loop moves on to the next phase itself.
        check_resumed_phase(read_marker(ref).get("phase"), phase_at(phases, max(ref.step - 1, 0)), ref.uri)
        return load_checkpoint(ref, model, optimizer)

    found = load_newest_good(run_uri, resume_from, log)
    ref = found[0] if found is not None else None
    if found is not None:
        ref, extra = found
        step = ref.step
        data_state = read_marker(ref).get("data")  # the same for every process count
        if extra is not None:
            set_rng_state(extra["rng"])
        else:
            # Only stochastic depth draws from the process RNG; its subsets are per process anyway.
            torch.manual_seed(mix_seed(cfg.seed, info.rank, step))
            log(f"checkpoint {ref.uri} was written by another number of processes: process RNG reseeded")
        if info.is_main:
            metrics.resume(step)
        log(f"resumed from {ref.uri} at step {step}")

    phase = phase_at(phases, max(step - 1, 0))
    if info.is_main and len(phases) > 1:
        log("phases: " + "; ".join(p.describe() for p in phases))
    source = open_source(cfg.data.source, cfg.data.kind)
    loader = GlobalBatchLoader(
        source,
        _augmentation(objective, phase),
        build_collate(cfg),
        phase.batch_size_per_rank,
        cfg.seed,
        info.rank,
        info.world_size,
        cfg.data.num_workers,
        streams=cfg.data.streams,
        step=step,
        state=data_state,
        order=cfg.data.order,
    )
    bench = build_knn_benchmark(cfg)
    knn_results: dict[int, dict[str, float]] = {
        r["step"]: {k: v for k, v in r.items() if k.startswith(("knn_", "feature_")) and v is not None}
        for r in metrics.rows
        if r.get("knn_top1_k20") is not None or r.get(f"knn_top1_k{cfg.eval.knn_ks[0]}") is not None
    }

    def evaluate(at_step: int) -> dict[str, float]:
        res = run_knn(model.teacher["backbone"], bench, cfg, dtype)
        knn_results[at_step] = res
        log(f"step {at_step}: " + ", ".join(f"{k}={v:.4f}" for k, v in res.items()))
        return res

    if step == 0 and bench is not None:
        metrics.append({"step": 0, "phase": phase.name, **evaluate(0)})

    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    students = list(model.student.items())
    last_ckpt = ref.uri if ref is not None else None
    while step < total:
        if phase_at(phases, step) != phase:
            phase = phase_at(phases, step)
            loader = loader.resized(_augmentation(objective, phase), build_collate(cfg), phase.batch_size_per_rank)
            if info.is_main:
                log(f"step {step + 1}/{total}: high-resolution adaptation starts, {phase.describe()}")
        sched = schedules.at(step)
        apply_step(optimizer, sched["lr"], sched["weight_decay"], sched["last_layer_lr"])
        t0 = time.perf_counter()
        batch = next(loader)
        if before_step is not None:
            before_step(step, batch)
        batch = _to_device(batch, device)
        t_data = time.perf_counter() - t0
        with autocast:
            out = objective.losses(model, batch, sched["teacher_temp"])
        terms = {k: float(v) for k, v in out.items() if k != "total"}
        terms["total_loss"] = float(out["total"].detach())
        reduced = all_reduce_mean(terms, info)
        if not all(math.isfinite(v) for v in reduced.values()):
            bad = {k: v for k, v in reduced.items() if not math.isfinite(v)}
            if info.is_main:
                metrics.flush()
            raise NonFiniteLossError(
                f"non-finite loss at step {step + 1}: {bad}; stopped before the optimiser step, "
                f"last good checkpoint: {last_ckpt or 'none'}"
            )
        optimizer.zero_grad(set_to_none=True)
        out["total"].backward()
        norms = {}
        if cfg.optim.clip_grad > 0:
            for name, module in students:
                norms[f"grad_norm_{name}"] = _grad_norm(
                    torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.optim.clip_grad)
                )
        optimizer.step()
        model.update_teacher(sched["momentum"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step += 1
        elapsed = time.perf_counter() - t0

        row = {"step": step, "phase": phase.name, **reduced, **sched, **norms}
        row.update(
            step_time_s=elapsed,
            data_time_s=t_data,
            images_per_s=phase.batch_size_per_rank * info.world_size / elapsed,
            memory_mb=peak_memory_mb(device),
        )
        eval_now = bench is not None and (
            step == total or (cfg.eval.knn_every_steps and step % cfg.eval.knn_every_steps == 0)
        )
        if eval_now:
            row.update(evaluate(step))
            if step == total:  # the student too, for the teacher-lag flag
                student_knn = run_knn(model.student["backbone"], bench, cfg, dtype)
                row.update({f"student_{k}": v for k, v in student_knn.items() if k.startswith("knn_")})
                if info.is_main:
                    log(f"step {step} student: " + ", ".join(
                        f"{k}={v:.4f}" for k, v in student_knn.items() if k.startswith("knn_")))
        if step % cfg.log_every_steps == 0 or eval_now or step == total:
            metrics.append(row)
            if info.is_main and (step % max(1, cfg.log_every_steps * 10) == 0 or step == total):
                terms_text = " ".join(f"{k.removesuffix('_loss')}={v:.4f}" for k, v in reduced.items()
                                      if k.endswith(("_loss", "_cosine")) and k != "total_loss")
                entropy = f" H(teacher)={reduced['teacher_entropy']:.3f}" if "teacher_entropy" in reduced else ""
                log(f"step {step}/{total} total={reduced['total_loss']:.4f} {terms_text}{entropy} "
                    f"lr={sched['lr']:.2e} {row['images_per_s']:.1f} img/s")

        if step % cfg.checkpoint.every_steps == 0 or step == total:
            extra = {"step": step, "rng": rng_state()}
            meta = {"phase": phase.as_dict(), "data": loader.state_dict()}
            last_ckpt = save_checkpoint(run_uri, step, model, optimizer, extra, keep=cfg.checkpoint.keep, meta=meta).uri
            if info.is_main:
                metrics.flush()
        if stop_at_step is not None and step >= stop_at_step and step < total:
            if info.is_main:
                metrics.flush()
            loader.close()
            return {"stopped_at": step, "checkpoint_uri": last_ckpt}

    loader.close()
    summary = _summary(cfg, run_uri, metrics, knn_results, last_ckpt, info, phases)
    summary["schedules"] = plan
    summary.update(_flags(cfg, metrics.rows, plan, summary))
    if info.is_main:
        warn(summary["flags"], log)
    summary.update(objective.summary(model, lambda backbone: run_knn(backbone, bench, cfg, dtype) if bench else {}))
    if info.is_main:
        metrics.flush()
        su.write_bytes_atomic(su.join(run_uri, "summary.json"), json.dumps(summary, indent=1).encode())
    barrier(info)
    return summary


def _flags(cfg: TrainConfig, rows: list[dict], plan: dict, summary: dict) -> dict[str, Any]:
    """The finished run's flags (:mod:`tasks.train.flags`) and what they measured."""
    last = rows[-1] if rows else {}
    student = {k.removeprefix("student_"): v for k, v in last.items() if k.startswith("student_knn_") and v is not None}
    teacher = {k: v for k, v in last.items() if k.startswith("knn_") and v is not None}
    out = run_flags(rows, cfg.monitor, plan["teacher_temp_warmup_steps"], summary["ln_k"], student, teacher)
    if student:
        out["student_knn"] = student
    return out


_FINAL_TERMS = ("dino_loss", "ibot_loss", "koleo_loss", "total_loss", "teacher_entropy", "teacher_batch_entropy",
                "cls_loss", "patch_loss", "cls_cosine", "patch_cosine")


def _tail_means(rows: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    """Mean of each key over the last 20% of ``rows`` (where present)."""
    tail = rows[-max(1, len(rows) // 5) :]
    return {
        k: sum(r[k] for r in tail if r.get(k) is not None) / max(1, sum(1 for r in tail if r.get(k) is not None))
        for k in keys
        if any(r.get(k) is not None for r in tail)
    }


def _phase_summaries(phases: list[Phase], train_rows: list[dict], world_size: int) -> list[dict[str, Any]]:
    """Per phase: its plan plus what it measured (throughput, memory, final losses)."""
    out = []
    for p in phases:
        rows = [r for r in train_rows if r.get("phase") == p.name]
        out.append({
            **p.as_dict(),
            "global_batch": p.batch_size_per_rank * world_size,
            "images_per_s": _tail_means(rows, ("images_per_s",)).get("images_per_s"),
            "peak_memory_mb": max((r.get("memory_mb") or 0) for r in rows) if rows else None,
            "final": _tail_means(rows, ("dino_loss", "ibot_loss", "koleo_loss", "cls_loss", "patch_loss", "total_loss")),
        })
    return out


def _summary(
    cfg, run_uri, metrics: MetricsLog, knn_results, last_ckpt, info: DistInfo, phases: list[Phase]
) -> dict[str, Any]:
    last = metrics.rows[-1] if metrics.rows else {}
    train_rows = [r for r in metrics.rows if r.get("images_per_s") is not None]
    tail = train_rows[-max(1, len(train_rows) // 5) :]
    final_terms = _tail_means(train_rows, _FINAL_TERMS)
    return {
        "run_uri": run_uri,
        "steps": int(last.get("step", 0)),
        "world_size": info.world_size,
        "global_batch": cfg.global_batch(info.world_size),
        "ln_k": math.log(cfg.loss.dino_prototypes),
        "final": final_terms,
        "knn": {str(s): v for s, v in sorted(knn_results.items())},
        "images_per_s": sum(r["images_per_s"] for r in tail) / max(1, len(tail)) if tail else None,
        "peak_memory_mb": max((r.get("memory_mb") or 0) for r in train_rows) if train_rows else None,
        "checkpoint_uri": last_ckpt,
        "metrics_uri": metrics.uri,
        "phases": _phase_summaries(phases, train_rows, info.world_size),
    }

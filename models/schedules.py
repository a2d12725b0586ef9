"""Per-step schedules and optimizer parameter groups for DINOv2 training.

Every schedule length is a FRACTION of the run, not a number of epochs: small runs are where
DINO collapses, and the official epoch-based warmups (30 epochs of teacher-temperature warmup,
EMA 0.992 -> 1 over 500 epochs) stretched or truncated onto a few hundred steps leave the teacher
near its random init. Fractions keep the shape of the recipe at any length.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn


def cosine_schedule(
    total_steps: int,
    base: float,
    final: float,
    warmup: float = 0.0,
    start: float = 0.0,
    hold: float = 0.0,
) -> torch.Tensor:
    """Per-step values (float64, length ``total_steps``).

    The first ``warmup`` fraction rises linearly from ``start`` towards ``base``, then a
    half-cosine goes from ``base`` to ``final``, and the last ``hold`` fraction stays at ``final``.
    With ``base == final`` this is a linear warmup followed by a constant (teacher temperature).
    """
    if total_steps < 0 or not (0.0 <= warmup and 0.0 <= hold and warmup + hold <= 1.0):
        raise ValueError(f"bad schedule: total_steps={total_steps}, warmup={warmup}, hold={hold}")
    n_warm = int(round(warmup * total_steps))
    n_hold = min(int(round(hold * total_steps)), total_steps - n_warm)
    n_cos = total_steps - n_warm - n_hold
    ramp = start + (base - start) * torch.arange(n_warm, dtype=torch.float64) / max(n_warm, 1)
    phase = torch.arange(n_cos, dtype=torch.float64) / max(n_cos, 1)
    cosine = final + 0.5 * (base - final) * (1.0 + torch.cos(math.pi * phase))
    return torch.cat([ramp, cosine, torch.full((n_hold,), float(final), dtype=torch.float64)])


def momentum_for_lag(total_steps: int, lag: float, floor: float) -> float:
    """The EMA momentum whose time constant ``1 / (1 - m)`` is ``lag`` of a ``total_steps`` run,
    never below ``floor``.

    The ImageNet-1k recipe's 0.992 over 100 epochs of 1,250 steps is a time constant of 125 steps,
    0.1% of its run: ``momentum_for_lag(125_000, 0.001, f) == 0.992``. Kept in proportion, a
    200-step run's teacher follows the student within a few steps instead of holding most of
    its random init to the end; the floor keeps it an average over several steps (a teacher
    equal to the student collapses).
    """
    if total_steps < 1 or lag <= 0 or not 0 <= floor < 1:
        raise ValueError(f"bad EMA horizon: total_steps={total_steps}, lag={lag}, floor={floor}")
    tau = lag * total_steps
    return max(floor, 1.0 - 1.0 / tau) if tau > 1 else floor


def scale_lr(base_lr: float, batch_size: int, reference_batch: int = 1024) -> float:
    """The DINOv2 square-root scaling rule: ``base_lr * sqrt(batch_size / reference_batch)``."""
    return base_lr * math.sqrt(batch_size / reference_batch)


@dataclass
class TrainingSchedules:
    """Per-step values of every schedule; ``at(step)`` reads one step (clamped to the end)."""

    lr: torch.Tensor
    last_layer_lr: torch.Tensor
    weight_decay: torch.Tensor
    momentum: torch.Tensor
    teacher_temp: torch.Tensor

    def at(self, step: int) -> dict[str, float]:
        i = min(max(step, 0), len(self.lr) - 1)
        return {
            "lr": float(self.lr[i]),
            "last_layer_lr": float(self.last_layer_lr[i]),
            "weight_decay": float(self.weight_decay[i]),
            "momentum": float(self.momentum[i]),
            "teacher_temp": float(self.teacher_temp[i]),
        }


def build_schedules(
    total_steps: int,
    *,
    lr: float,
    min_lr: float = 1e-6,
    lr_warmup: float = 0.1,
    weight_decay: float = 0.04,
    weight_decay_end: float = 0.4,
    momentum: float = 0.992,
    momentum_end: float = 1.0,
    teacher_temp: float = 0.07,
    teacher_temp_start: float = 0.04,
    teacher_temp_warmup: float = 0.3,
    freeze_last_layer: float = 0.01,
    hold: float = 0.0,
) -> TrainingSchedules:
    """All training schedules for a run of ``total_steps``; every length is a fraction of the run.

    LR: linear warmup from 0 over ``lr_warmup``, cosine to ``min_lr``. Last-layer LR: the same,
    but 0 for the first ``freeze_last_layer`` fraction (prototypes stay put while the backbone
    settles). Weight decay and EMA momentum: cosine over the whole run. Teacher temperature:
    linear ``teacher_temp_start -> teacher_temp`` over ``teacher_temp_warmup``, then constant.
    ``hold``: final fraction where LR, weight decay and momentum stay at their final values.
    The defaults are the ImageNet-1k recipe's proportions (10/100 epochs warmup, 30/100 teacher
    temperature warmup, 1/100 frozen last layer).
    """
    lr_values = cosine_schedule(total_steps, lr, min_lr, warmup=lr_warmup, start=0.0, hold=hold)
    last_layer = lr_values.clone()
    last_layer[: int(round(freeze_last_layer * total_steps))] = 0.0
    return TrainingSchedules(
        lr=lr_values,
        last_layer_lr=last_layer,
        weight_decay=cosine_schedule(total_steps, weight_decay, weight_decay_end, hold=hold),
        momentum=cosine_schedule(total_steps, momentum, momentum_end, hold=hold),
        teacher_temp=cosine_schedule(
            total_steps, teacher_temp, teacher_temp, warmup=teacher_temp_warmup, start=teacher_temp_start
        ),
    )


_TOKEN_NAMES = ("pos_embed", "cls_token", "register_tokens", "mask_token")
_CHUNKED_BLOCK = re.compile(r"(?:^|\.)blocks\.\d+\.(\d+)\.")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_id(name: str, n_blocks: int) -> int:
    """Depth of a parameter for layer-wise LR decay: 0 for the embeddings and tokens, i+1 for
    block i (also ``blocks.<chunk>.<i>.`` names from chunked FSDP wrapping), n_blocks+1 for
    everything after the blocks (final norm, heads)."""
    if "patch_embed" in name or any(token in name for token in _TOKEN_NAMES):
        return 0
    match = _CHUNKED_BLOCK.search(name) or _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    return n_blocks + 1


def _count_blocks(names: Iterable[str]) -> int:
    ids = [int(m.group(1)) for n in names if (m := _CHUNKED_BLOCK.search(n) or _BLOCK.search(n))]
    return max(ids) + 1 if ids else 0


def build_param_groups(
    model: nn.Module,
    *,
    layer_decay: float = 0.9,
    patch_embed_lr_mult: float = 0.2,
    decay_tokens: bool = False,
    n_blocks: int | None = None,
) -> list[dict]:
    """Optimizer parameter groups with ``lr_multiplier``, ``wd_multiplier`` and ``is_last_layer``.

    ``model`` is typically the student ``ModuleDict`` (backbone, dino_head, ibot_head).
    lr_multiplier = layer_decay ** (n_blocks + 1 - layer_id) (see ``layer_id``), times
    ``patch_embed_lr_mult`` for the patch embedding. Weight decay is off for biases, norms,
    LayerScale gammas and any other 1-D parameter, and for the learned tokens and positional
    embedding unless ``decay_tokens`` (the official code decays the tokens). Parameters whose
    name contains ``last_layer`` (the prototypes) are flagged ``is_last_layer`` so their LR can
    be frozen early on. Frozen parameters (requires_grad False) are left out. Parameters with
    equal settings share one group; ``param_names`` lists the names in each group.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depth = _count_blocks(n for n, _ in named) if n_blocks is None else n_blocks
    groups: dict[tuple[float, float, bool], dict] = {}
    for name, param in named:
        lr_mult = layer_decay ** (depth + 1 - layer_id(name, depth))
        if "patch_embed" in name:
            lr_mult *= patch_embed_lr_mult
        no_decay = (
            name.endswith(".bias")
            or "norm" in name
            or "gamma" in name
            or param.ndim <= 1
            or (not decay_tokens and any(token in name for token in _TOKEN_NAMES))
        )
        key = (lr_mult, 0.0 if no_decay else 1.0, "last_layer" in name)
        if key not in groups:
            groups[key] = {"params": [], "param_names": []}
            groups[key].update(lr_multiplier=key[0], wd_multiplier=key[1], is_last_layer=key[2])
        group = groups[key]
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())


def apply_step(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float, last_layer_lr: float) -> None:
    """Write one step's scheduled values into every group, honouring its multipliers."""
    for group in optimizer.param_groups:
        base = last_layer_lr if group.get("is_last_layer", False) else lr
        group["lr"] = base * group.get("lr_multiplier", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_multiplier", 1.0)

"""Stochastic depth for residual branches, on packed tokens.

`add_residual(x, packing, branch, rate, mode, training)` returns x + branch(x) with the branch
randomly dropped per sequence (image crop) during training:

- mode "subset" (DINOv2's efficient stochastic depth): from every group of B same-size crops,
  keep a random subset of max(int(B * (1 - rate)), 1) crops, run the branch ONLY on their tokens,
  and add the result back with `index_add`, scaled by B / kept. Each crop is kept with probability
  kept / B, so the update is unbiased; at rate 0.4 the branch costs ~60% of its full FLOPs.
  The subset is drawn per crop group (globals and locals separately, as the official list version
  does), so both crop sizes keep their share and the subset is itself a valid packing.
- mode "per_sample" (classic DropPath): run the branch on every token, then zero whole crops
  with probability `rate` and scale the survivors by 1 / (1 - rate). Same expectation, full cost.

In eval mode, or at rate 0, both return the deterministic x + branch(x).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from models.packing import Packing

DropPathMode = Literal["subset", "per_sample"]
DROP_PATH_MODES = ("subset", "per_sample")

Branch = Callable[[Tensor, Packing], Tensor]


def drop_path_rates(rate: float, depth: int, uniform: bool) -> list[float]:
    """Per-block rates: the same everywhere (DINOv2's `drop_path_uniform`) or a linear 0 -> rate ramp."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}")
    if uniform or depth == 1:
        return [float(rate)] * depth
    return [rate * i / (depth - 1) for i in range(depth)]


def add_residual(
    x: Tensor,
    packing: Packing,
    branch: Branch,
    rate: float,
    mode: DropPathMode = "subset",
    training: bool = True,
) -> Tensor:
    """x + branch(x, packing) with stochastic depth; x is packed [T, D]."""
    if not training or rate <= 0.0:
        return x + branch(x, packing)
    if mode == "subset":
        sub_packing, rows, scale = packing.sample_subset(1.0 - rate, device=x.device)
        out = branch(x.index_select(0, rows), sub_packing)
        return x.index_add(0, rows, (out * scale.to(out.dtype)[:, None]).to(x.dtype))
    if mode == "per_sample":
        num_sequences = sum(b for b, _ in packing.groups)
        keep = torch.empty(num_sequences, device=x.device).bernoulli_(1.0 - rate) / (1.0 - rate)
        out = branch(x, packing)
        return x + out * packing.per_sample_to_tokens(keep).to(out.dtype)[:, None]
    raise ValueError(f"unknown drop_path_mode {mode!r}; expected one of {DROP_PATH_MODES}")

"""One distillation step's losses: the pretraining objectives with a frozen teacher.

Differences from ``SSLMetaArch.forward_losses`` (paper, section 5): the targets come from the
frozen teacher's backbone and heads instead of an EMA of the student; the student sees every
patch (no mask tokens); iBOT compares student and teacher on the patches of both global crops
(all of them, or only at sampled positions with ``ibot_patches="masked"``). The loss modules,
centering and heads are the SSL model's own, so the checkpoint is a training checkpoint.

``feature_losses`` is the step of a teacher without heads: the student's CLS and patch tokens,
through its ``cls_proj`` / ``patch_proj`` linear maps, are matched to the teacher's tokens,
standardised per token (layer norm without affine), by ``1 - cosine + smooth-L1``: cosine carries
the direction, smooth-L1 the magnitude, and neither needs a temperature or a centering. Crops and
averaging follow the head recipe: each global crop against the teacher's view of the same crop,
each local crop against both teacher global crops, all (student crop, teacher crop) pairs averaged;
patches of both global crops averaged per image, then over images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from models.ssl import SSLMetaArch
from tasks.release.load import LoadedModel


def patch_selection(batch: dict, n_images: int, n_patches: int, mode: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """(flat patch indices into [G*B*N], per-index weight 1/patches of its image) for iBOT."""
    if mode == "all":
        idx = torch.arange(n_images * n_patches, device=device)
        return idx, torch.full((idx.numel(),), 1.0 / n_patches, device=device)
    return batch["mask_indices_list"].to(device), batch["masks_weight"].to(device)


@torch.no_grad()
def teacher_targets(
    model: SSLMetaArch, teacher: LoadedModel, global_crops: Tensor, idx: Tensor | None, temp: float
) -> dict[str, Tensor]:
    out = teacher.backbone.forward_features(global_crops)
    targets = {"dino": model.dino_targets(teacher.heads["dino_head"](out["x_norm_clstoken"]), temp)}
    if idx is not None:
        patches = out["x_norm_patchtokens"].flatten(0, 1).index_select(0, idx)
        head = teacher.heads.get("ibot_head", teacher.heads["dino_head"])
        targets["ibot"] = model.ibot_targets(head(patches), temp)
    return targets


def distill_losses(
    model: SSLMetaArch, teacher: LoadedModel, batch: dict, teacher_temp: float, ibot_patches: str = "all"
) -> dict[str, Tensor]:
    """Loss terms of one step; ``"total"`` carries the graph, the rest are detached."""
    global_crops = batch["collated_global_crops"]
    local_crops = batch.get("collated_local_crops")
    has_local = local_crops is not None and local_crops.shape[0] > 0
    n_images = global_crops.shape[0]
    student = model.student
    grid = student["backbone"].patch_embed.grid_size(*global_crops.shape[-2:])
    n_patches = grid[0] * grid[1]
    use_ibot = model.weights.ibot > 0
    idx = weight = None
    if use_ibot:
        idx, weight = patch_selection(batch, n_images, n_patches, ibot_patches, global_crops.device)
        use_ibot = idx.numel() > 0
        idx = idx if use_ibot else None

    targets = teacher_targets(model, teacher, global_crops, idx, teacher_temp)

    crops = [global_crops] + ([local_crops] if has_local else [])
    outs = student["backbone"].forward_features(crops)
    g_cls = outs[0]["x_norm_clstoken"]
    l_cls = outs[1]["x_norm_clstoken"] if has_local else g_cls[:0]
    s_patches = outs[0]["x_norm_patchtokens"].flatten(0, 1).index_select(0, idx) if use_ibot else None

    shared = use_ibot and not model.separate_ibot_head
    logits = student["dino_head"](torch.cat([l_cls, g_cls] + ([s_patches] if shared else [])))
    n_l, n_g = l_cls.shape[0], g_cls.shape[0]
    l_logits, g_logits = logits[:n_l], logits[n_l : n_l + n_g]

    terms: dict[str, Tensor] = {}
    total = g_cls.new_zeros((), dtype=torch.float32)
    if model.weights.dino > 0:
        dino = model.dino_loss(g_logits, targets["dino"], l_logits if has_local else None, model.n_global_crops)
        terms["dino_loss"] = dino
        total = total + model.weights.dino * dino
    if use_ibot:
        p_logits = logits[n_l + n_g :] if shared else student["ibot_head"](s_patches)
        ibot = model.ibot_loss(p_logits, targets["ibot"], weight, n_images)
        terms["ibot_loss"] = ibot
        total = total + model.weights.ibot * ibot
    if model.weights.koleo > 0:
        koleo = sum(model.koleo_loss(c) for c in g_cls.chunk(model.n_global_crops))
        terms["koleo_loss"] = koleo
        total = total + model.weights.koleo * koleo
    stats = {k: v.detach() for k, v in terms.items()}
    stats["teacher_entropy"] = _mean_entropy(targets["dino"])
    stats["ln_k"] = torch.tensor(math.log(targets["dino"].shape[-1]))
    stats["total"] = total
    return stats


def feature_match(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row ``1 - cos + smooth-L1`` of a student projection against a teacher token (standardised
    here), and the per-row cosine; in fp32 whatever the autocast."""
    pred = pred.float()
    target = F.layer_norm(target.float(), target.shape[-1:])
    cos = F.cosine_similarity(pred, target, dim=-1)
    return 1.0 - cos + F.smooth_l1_loss(pred, target, reduction="none").mean(-1), cos


def feature_losses(model: SSLMetaArch, teacher: LoadedModel, batch: dict, ibot_patches: str = "all") -> dict[str, Tensor]:
    """Loss terms of one step of feature distillation; ``"total"`` carries the graph.

    ``cls_cosine`` / ``patch_cosine`` are the mean cosine between the student's projected tokens and
    the teacher's (global crops, same view): 1 is a perfect match."""
    global_crops = batch["collated_global_crops"]
    local_crops = batch.get("collated_local_crops")
    has_local = local_crops is not None and local_crops.shape[0] > 0
    n_images = global_crops.shape[0]
    n_global = model.n_global_crops
    student = model.student
    use_patches = model.weights.ibot > 0
    with torch.no_grad():
        t_out = teacher.backbone.forward_features(global_crops)
    crops = [global_crops] + ([local_crops] if has_local else [])
    outs = student["backbone"].forward_features(crops)
    g_cls = outs[0]["x_norm_clstoken"]

    terms: dict[str, Tensor] = {}
    total = g_cls.new_zeros((), dtype=torch.float32)
    if model.weights.dino > 0:
        t_cls = t_out["x_norm_clstoken"]
        g_loss, g_cos = feature_match(student["cls_proj"](g_cls), t_cls)
        loss_sum, pairs = g_loss.sum(), g_loss.numel()
        if has_local:
            batch_size = n_images // n_global
            l_pred = student["cls_proj"](outs[1]["x_norm_clstoken"]).unflatten(0, (-1, batch_size))
            t_views = t_cls.unflatten(0, (n_global, batch_size))
            l_loss, _ = feature_match(l_pred[:, None].expand(-1, n_global, -1, -1),
                                      t_views[None].expand(l_pred.shape[0], -1, -1, -1))
            loss_sum, pairs = loss_sum + l_loss.sum(), pairs + l_loss.numel()
        cls = loss_sum / pairs
        terms["cls_loss"] = cls
        terms["cls_cosine"] = g_cos.mean()
        total = total + model.weights.dino * cls
    if use_patches:
        grid = student["backbone"].patch_embed.grid_size(*global_crops.shape[-2:])
        n_patches = grid[0] * grid[1]
        idx, weight = patch_selection(batch, n_images, n_patches, ibot_patches, global_crops.device)
        if idx.numel() > 0:
            s_patches = outs[0]["x_norm_patchtokens"].flatten(0, 1).index_select(0, idx)
            t_patches = t_out["x_norm_patchtokens"].flatten(0, 1).index_select(0, idx)
            p_loss, p_cos = feature_match(student["patch_proj"](s_patches), t_patches)
            patch = (p_loss * weight).sum() / n_images
            terms["patch_loss"] = patch
            terms["patch_cosine"] = p_cos.mean()
            total = total + model.weights.ibot * patch
    if model.weights.koleo > 0:
        koleo = sum(model.koleo_loss(c) for c in g_cls.chunk(n_global))
        terms["koleo_loss"] = koleo
        total = total + model.weights.koleo * koleo
    stats = {k: v.detach() for k, v in terms.items()}
    stats["total"] = total
    return stats


def _mean_entropy(probs: Tensor) -> Tensor:
    """Mean per-image entropy of the targets (ln K would mean uninformative targets)."""
    p = probs.float()
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()

"""Write the upstream golden files under tests/golden/data/ (NOT run by the test suite).

Every number in those files was computed by the upstream code, never by lvd:

* the official DINOv2 code, facebookresearch/dinov2 at commit
  b8931f7bf91576930313be2c6d6af376033b35f0 ("b8931f7", "Update README for DINOv3"), exported with
  ``git -C /work/.mirror/facebookresearch+dinov2/repo archive HEAD | tar -x -C /tmp/dinov2-official``
  and imported from there (``dinov2.models.vision_transformer``, ``dinov2.layers``, ``dinov2.loss``
  only; xFormers absent, so the official SDPA attention and the plain SwiGLU FFN run);
* timm 1.0.31 (``pip install --target /tmp/timm-site --no-deps timm==1.0.31``);
* torch 2.13.0+cpu (the project's .venv), float32, CPU, ``torch.use_deterministic_algorithms``.

How the files were made (from the repository root)::

    rm -rf /tmp/dinov2-official && mkdir -p /tmp/dinov2-official
    git -C /work/.mirror/facebookresearch+dinov2/repo archive b8931f7 | tar -x -C /tmp/dinov2-official
    pip install --target /tmp/timm-site --no-deps timm==1.0.31
    PYTHONPATH=/tmp/dinov2-official:/tmp/timm-site .venv/bin/python tests/golden/make_golden.py

timm's data package imports torchvision at import time, and the only torchvision wheels on the
package index are CUDA builds that cannot load against CPU torch; when torchvision does not import,
this script registers empty ``torchvision.*`` stand-in modules before importing timm. Nothing in
timm's VisionTransformer (the only timm code run here) calls torchvision.

Seeds: every case seeds ``torch.manual_seed`` with its own number (listed in CASES / below) before
building its model, then overwrites every parameter with seeded random values
(`randomize_`: weights ~ N(0, 1/fan_in), biases and tokens ~ N(0, 0.1-0.5), norm scales 1 + N(0, 0.2),
LayerScale gammas ~ U(0.5, 1.5)), so no LayerScale at 1e-5 hides a block's contribution and no
weight sits at its initial value. Inputs come from their own generator seeded per case.

Files (torch.save of plain dicts of tensors / numbers / strings; load with weights_only=True):

* ``vit_<case>.pt``: ``state_dict`` (the official module's state dict, official key layout,
  e.g. ``blocks.0.attn.qkv.weight``; chunked ``blocks.<chunk>.<block>.`` for the block_chunks case;
  timm's own layout for the timm cases), ``config`` (the constructor arguments), ``inputs``
  (images, masks) and ``outputs`` (forward_features dict entries, get_intermediate_layers,
  forward at other resolutions).
* ``heads.pt``: official DINOHead state dicts (``last_layer.weight_g``/``weight_v``), inputs, logits.
* ``losses.pt``: fixed logits/features and the official DINOLoss (softmax centering and
  Sinkhorn-Knopp), iBOTPatchLoss and KoLeoLoss targets and values, composed exactly as
  ``dinov2/train/ssl_meta_arch.py`` composes them.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import math
import os
import subprocess
import sys
import tempfile
import types
import warnings
from pathlib import Path

import torch

UPSTREAM_COMMIT = "b8931f7bf91576930313be2c6d6af376033b35f0"
OUT = Path(__file__).resolve().parent / "data"


# ---- environment -----------------------------------------------------------------------------


def _stub_torchvision() -> None:
    """Register empty torchvision modules (any attribute is a dummy class) so timm imports."""
    try:
        import torchvision  # noqa: F401

        return
    except Exception:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]

    class _Meta(type):
        def __getattr__(cls, attr):  # class attributes (enum members, ...) are stand-ins too
            if attr.startswith("__"):
                raise AttributeError(attr)
            sub = _Meta(attr, (cls,), {})
            setattr(cls, attr, sub)
            return sub

    class _Dummy(metaclass=_Meta):
        def __init__(self, *a, **k):
            raise RuntimeError("torchvision stand-in: not available in the golden generator")

    class _Module(types.ModuleType):
        def __getattr__(self, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            value = _Meta(attr, (_Dummy,), {})
            setattr(self, attr, value)
            return value

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):
            if fullname == "torchvision" or fullname.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            mod = _Module(spec.name)
            mod.__path__ = []
            return mod

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, _Finder())


def _upstream_commit() -> str:
    import dinov2

    root = Path(dinov2.__file__).resolve().parent.parent
    mirror = "/work/.mirror/facebookresearch+dinov2/repo"
    try:
        head = subprocess.run(["git", "-C", mirror, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        head = "unknown"
    print(f"official dinov2 from {root} (mirror HEAD {head})")
    return head


# ---- seeded weights --------------------------------------------------------------------------


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "gamma":  # LayerScale
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        elif name in ("cls_token", "register_tokens", "reg_token", "mask_token"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        elif name == "pos_embed":
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        elif leaf == "weight_g":
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        elif p.ndim == 1 and ("norm" in name) and leaf == "weight":
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        elif p.ndim == 1:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        else:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def _images(g: torch.Generator, b: int, h: int, w: int) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=g)


def _inputs(seed: int = 1) -> dict:
    """Images shared by every ViT case (inputs.pt): 2 x 56 px (the native 4x4 grid), masks for them
    (image 1 unmasked, as in training batches), 1 x 70 px (5x5 grid: resized pos_embed) and
    1 x 70x42 (5x3: H != W checks the orientation of the resized grid)."""
    g = torch.Generator().manual_seed(seed)
    x = _images(g, 2, 56, 56)
    masks = torch.rand(2, (56 // 14) ** 2, generator=g) < 0.4
    masks[1] = False
    return {"seed": seed, "x": x, "masks": masks, "x70": _images(g, 1, 70, 70), "x_rect": _images(g, 1, 70, 42)}


INPUTS = _inputs()


def _detach(d):
    if isinstance(d, torch.Tensor):
        return d.detach().clone().contiguous()
    if isinstance(d, dict):
        return {k: _detach(v) for k, v in d.items() if v is not None}
    if isinstance(d, (list, tuple)):
        return [_detach(v) for v in d]
    return d


# ---- official ViT cases ----------------------------------------------------------------------

BASE = dict(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0,
            init_values=1e-5, drop_path_rate=0.0, block_chunks=0)
CASES = {
    # name: (seed, overrides). Resize rules as the releases: reg4 (antialias, offset 0), else (no antialias, +0.1)
    "official_reg0": (101, dict(num_register_tokens=0, ffn_layer="mlp", interpolate_antialias=False,
                                interpolate_offset=0.1)),
    "official_reg4": (102, dict(num_register_tokens=4, ffn_layer="mlp", interpolate_antialias=True,
                                interpolate_offset=0.0)),
    # SwiGLU as ViT-g (hidden width 88 from mlp_ratio 2, to keep the file small), saved in the
    # chunked key layout of official training checkpoints (block_chunks=2: blocks.<chunk>.<block>.)
    "official_swiglu_chunked": (103, dict(num_register_tokens=0, ffn_layer="swiglufused", mlp_ratio=2.0,
                                          block_chunks=2, interpolate_antialias=False, interpolate_offset=0.1)),
    # 4 heads of 16: the head count is not stored in the weights (lvd infers 2 for width 64)
    "official_heads4": (104, dict(num_heads=4, depth=1, mlp_ratio=1.0, num_register_tokens=0, ffn_layer="mlp",
                                  interpolate_antialias=False, interpolate_offset=0.1)),
}


@torch.no_grad()
def official_vit_case(name: str, seed: int, overrides: dict) -> dict:
    from dinov2.models.vision_transformer import DinoVisionTransformer
    from dinov2.layers import MemEffAttention, NestedTensorBlock
    from functools import partial

    cfg = dict(BASE, **overrides)
    torch.manual_seed(seed)
    model = DinoVisionTransformer(block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention), **cfg)
    randomize_(model, seed)
    model.eval()

    inp = INPUTS
    x, masks, x70, x_rect = inp["x"], inp["masks"], inp["x70"], inp["x_rect"]

    outputs = {
        "forward_features": model.forward_features(x),
        "forward_features_masked": model.forward_features(x, masks=masks),
        "forward_cls": model(x),
        # the last n=2 blocks (the last one for a depth-1 model), with their class tokens
        "intermediate_last_n": [list(t) for t in model.get_intermediate_layers(x, n=min(2, cfg["depth"]),
                                                                               return_class_token=True)],
        "intermediate_first_reshaped": list(model.get_intermediate_layers(x, n=[0], reshape=True)),
        "forward_features_70": model.forward_features(x70),
        "forward_features_70x42": model.forward_features(x_rect),
    }
    outputs = _detach(outputs)
    for key in ("forward_features", "forward_features_masked", "forward_features_70", "forward_features_70x42"):
        outputs[key].pop("masks", None)
    return {
        "upstream": f"facebookresearch/dinov2@{UPSTREAM_COMMIT}",
        "seed": seed,
        "config": cfg,
        "state_dict": _detach(model.state_dict()),
        "inputs": "inputs.pt: x, masks, x70, x_rect",
        "outputs": outputs,
    }


# ---- timm cases ------------------------------------------------------------------------------

TIMM_CASES = {
    # class-positioned pos_embed [1, 1 + N, D], with a classifier head (which lvd drops)
    "timm_reg0": (201, "vit_small_patch14_dinov2", dict(depth=1, num_classes=5)),
    # no_embed_class pos_embed [1, N, D] and reg_token [1, 4, D], as timm's converted reg4 releases
    "timm_reg4": (202, "vit_small_patch14_reg4_dinov2", dict(depth=1, num_classes=0)),
}


@torch.no_grad()
def timm_vit_case(name: str, seed: int, arch: str, extra: dict) -> dict:
    import timm

    kwargs = dict(dict(pretrained=False, depth=2, embed_dim=64, num_heads=2, img_size=56, dynamic_img_size=True),
                  **extra)
    torch.manual_seed(seed)
    model = timm.create_model(arch, **kwargs)
    randomize_(model, seed)
    model.eval()
    x, x70, x_rect = INPUTS["x"], INPUTS["x70"], INPUTS["x_rect"]
    outs = {}
    for key, inp in (("56", x), ("70", x70), ("70x42", x_rect)):
        feats = model.forward_features(inp)
        outs[f"forward_features_{key}"] = feats
        outs[f"pre_logits_{key}"] = model.forward_head(feats, pre_logits=True)
        outs[f"forward_{key}"] = model(inp)
    kwargs.pop("pretrained")
    return {
        "upstream": f"timm {timm.__version__}: timm.create_model({arch!r}, **config)",
        "seed": seed,
        "arch": arch,
        "config": kwargs,
        "num_prefix_tokens": int(model.num_prefix_tokens),
        "state_dict": _detach(model.state_dict()),
        "inputs": "inputs.pt: x, x70, x_rect",
        "outputs": _detach(outs),
    }


# ---- heads -----------------------------------------------------------------------------------

HEADS = {
    "head_3layer": (301, dict(in_dim=64, out_dim=128, nlayers=3, hidden_dim=96, bottleneck_dim=32)),
    "head_2layer_nobias": (302, dict(in_dim=64, out_dim=128, nlayers=2, hidden_dim=96, bottleneck_dim=32,
                                     mlp_bias=False)),
    "head_1layer": (303, dict(in_dim=64, out_dim=128, nlayers=1, bottleneck_dim=32)),
}


@torch.no_grad()
def heads_file() -> dict:
    from dinov2.layers import DINOHead

    out = {"upstream": f"facebookresearch/dinov2@{UPSTREAM_COMMIT}"}
    for name, (seed, cfg) in HEADS.items():
        torch.manual_seed(seed)
        head = DINOHead(**cfg)
        randomize_(head, seed)
        head.eval()
        g = torch.Generator().manual_seed(seed + 1000)
        x = torch.randn(8, cfg["in_dim"], generator=g)
        out[name] = {"seed": seed, "config": cfg, "state_dict": _detach(head.state_dict()), "x": x,
                     "logits": head(x).detach().clone()}
    return out


# ---- losses ----------------------------------------------------------------------------------


def losses_file() -> dict:
    import torch.distributed as dist
    from dinov2.loss import DINOLoss, KoLeoLoss, iBOTPatchLoss

    # iBOTPatchLoss.sinkhorn_knopp_teacher all-reduces unconditionally: one gloo process
    store = tempfile.mktemp(prefix="golden-pg-")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        return _losses()
    finally:
        dist.destroy_process_group()
        if os.path.exists(store):
            os.remove(store)


def _losses() -> dict:
    from dinov2.loss import DINOLoss, KoLeoLoss, iBOTPatchLoss

    g = torch.Generator().manual_seed(401)
    B, K, n_local, D, N = 4, 64, 3, 64, 16
    teacher_temp, student_temp = 0.07, 0.1
    n_global = 2
    n_terms = (n_global - 1) * n_global + max(n_local * n_global, 1)

    def swap(t):  # ssl_meta_arch: teacher global crops chunked and cat'd in reverse
        a, b = t.chunk(2)
        return torch.cat((b, a))

    # Head outputs are cosines times the prototypes' norm (1 in the official head): logits in [-1, 1].
    # (The official Sinkhorn-Knopp exponentiates logits / temp without subtracting a maximum, so
    # logits much larger than 88 * temp give inf/NaN there; these stay in the range training sees.)
    def logits(rows):
        return torch.rand(rows, K, generator=g) * 2 - 1

    # teacher CLS logits of two consecutive steps (natural crop order: rows [c*B:(c+1)*B] = crop c)
    t_steps = [logits(n_global * B) for _ in range(2)]
    s_global = logits(n_global * B)
    s_local = logits(n_local * B)

    def dino_total(loss, targets_swapped):
        t_list = targets_swapped.view(n_global, -1, K)
        local = loss(student_output_list=s_local.chunk(n_local), teacher_out_softmaxed_centered_list=t_list) / n_terms
        glob = loss(student_output_list=[s_global], teacher_out_softmaxed_centered_list=[t_list.flatten(0, 1)]) \
            * 2 / n_terms
        return local, glob

    out: dict = {"upstream": f"facebookresearch/dinov2@{UPSTREAM_COMMIT}",
                 "config": dict(B=B, K=K, n_local=n_local, n_global=n_global, teacher_temp=teacher_temp,
                                student_temp=student_temp, center_momentum=0.9, sk_iterations=3)}
    out["inputs"] = {"teacher_steps": t_steps, "student_global": s_global, "student_local": s_local}

    # softmax centering over two steps (the second step's targets use the first step's center)
    loss = DINOLoss(K, student_temp=student_temp, center_momentum=0.9)
    targets = []
    for t in t_steps:
        probs = loss.softmax_center_teacher(swap(t), teacher_temp=teacher_temp)
        loss.update_center(swap(t))
        targets.append(swap(probs))  # back to natural order
    loss.apply_center_update()
    local, glob = dino_total(loss, swap(targets[-1]))
    out["dino_softmax"] = {"targets": targets, "center_after": loss.center.clone(), "local_loss": local,
                           "global_loss": glob, "total_loss": local + glob}

    # Sinkhorn-Knopp
    loss = DINOLoss(K, student_temp=student_temp)
    sk = loss.sinkhorn_knopp_teacher(swap(t_steps[0]), teacher_temp=teacher_temp, n_iterations=3)
    local, glob = dino_total(loss, sk)
    out["dino_sinkhorn"] = {"targets": swap(sk), "local_loss": local, "global_loss": glob,
                            "total_loss": local + glob}

    # iBOT: masks over 2B global-crop images of N patches, one image unmasked
    masks = torch.rand(n_global * B, N, generator=g) < 0.45
    masks[2] = False
    mask_indices = masks.flatten().nonzero().flatten()
    n_masked = int(mask_indices.shape[0])
    upperbound = n_masked + 5
    masks_weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    t_patch_steps = [logits(n_masked) for _ in range(2)]
    s_patch = logits(upperbound)  # padded to the upper bound, as the collate does

    ibot = iBOTPatchLoss(K, student_temp=student_temp, center_momentum=0.9)
    ibot_targets = []
    for t in t_patch_steps:
        tt = t.unsqueeze(0)
        probs = ibot.softmax_center_teacher(tt[:, :n_masked], teacher_temp=teacher_temp).squeeze(0)
        ibot.update_center(tt[:n_masked])
        ibot_targets.append(probs)
    ibot.apply_center_update()

    def ibot_value(targets):
        return ibot.forward_masked(s_patch[:n_masked], targets, student_masks_flat=masks,
                                   n_masked_patches=n_masked, masks_weight=masks_weight) * 2 * (1.0 / n_global)

    out["ibot_inputs"] = {"masks": masks, "masks_weight": masks_weight, "n_masked": n_masked,
                          "upperbound": upperbound, "teacher_steps": t_patch_steps, "student_padded": s_patch}
    out["ibot_softmax"] = {"targets": ibot_targets, "center_after": ibot.center.clone(),
                           "loss": ibot_value(ibot_targets[-1])}
    ibot_sk = iBOTPatchLoss(K, student_temp=student_temp)
    sk_patch = ibot_sk.sinkhorn_knopp_teacher(t_patch_steps[0], teacher_temp=teacher_temp,
                                              n_masked_patches_tensor=torch.full((1,), n_masked, dtype=torch.long))
    out["ibot_sinkhorn"] = {"targets": sk_patch, "loss": ibot_value(sk_patch)}

    # KoLeo on the student global CLS (per global crop), one near-duplicate pair
    cls = torch.randn(n_global * B, D, generator=g)
    cls[1] = cls[0] + 1e-3 * torch.randn(D, generator=g)
    koleo = KoLeoLoss()
    per_crop = [koleo(p) for p in cls.chunk(2)]
    out["koleo"] = {"x": cls, "per_crop": per_crop, "weighted_sum": 0.1 * sum(per_crop)}
    return _detach(out)


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    _stub_torchvision()
    _upstream_commit()
    import timm

    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(dict(INPUTS), OUT / "inputs.pt")
    meta = {"upstream_commit": UPSTREAM_COMMIT, "timm": timm.__version__, "torch": str(torch.__version__)}
    print(meta)
    for name, (seed, overrides) in CASES.items():
        torch.save(dict(official_vit_case(name, seed, overrides), meta=meta), OUT / f"vit_{name}.pt")
    for name, (seed, arch, extra) in TIMM_CASES.items():
        torch.save(dict(timm_vit_case(name, seed, arch, extra), meta=meta), OUT / f"vit_{name}.pt")
    torch.save(dict(heads_file(), meta=meta), OUT / "heads.pt")
    torch.save(dict(losses_file(), meta=meta), OUT / "losses.pt")
    for f in sorted(OUT.iterdir()):
        print(f"{f.name:40s} {f.stat().st_size / 1024:8.1f} KiB")


if __name__ == "__main__":
    main()

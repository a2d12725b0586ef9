"""lvd against outputs computed by the real upstream code (tests/golden/data, see make_golden.py).

The golden files hold state dicts in the official DINOv2 layout (facebookresearch/dinov2 @ b8931f7)
and in timm 1.0.31's layout, with the outputs the upstream modules computed from them. Here each
state dict is written as a plain torch file and opened only through lvd's public paths
(`lvd.load`, `tasks.release.load.load_model`, `models.hub.dino_head_from_state_dict`); the
losses are lvd's own modules (`models.losses`) on the same inputs. Nothing is compared against
lvd's own mappings or a round trip through them.

Maxima measured (torch 2.13.0+cpu, float32): every backbone output of every loadable case
(forward_features incl. masked, forward, get_intermediate_layers, 70 px and 70x42 inputs,
timm forward_features and pre-logits) and every DINO head logit: max abs diff 0.0 (bit-identical).
Losses: rel diff <= 1.1e-7 (DINO softmax 8.6e-8, DINO Sinkhorn 0.0, iBOT softmax 0.0, iBOT
Sinkhorn 1.0e-7, KoLeo 0.0); targets: max abs diff <= 9e-8, centers <= 7.5e-9.

Known mismatch (xfail, strict; `lvd.load` logs the head count it assumes):
* a backbone whose heads are not 32 wide at width 64 (4 heads of 16): the head count is not in the
  weights and `lvd.load` infers 2 (vit_pico's), so its outputs differ by up to 1.5 (abs); with
  `num_heads=4` passed to `models.official_weights.vit_from_official_state_dict` they are exact.

An official DINOHead with nlayers=1 stores its single Linear as `mlp.weight`/`mlp.bias` (no
Sequential); `dino_head_from_state_dict` reads that layout too (checked above).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lvd
from models.hub import dino_head_from_state_dict
from models.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, SoftmaxCentering, sinkhorn_knopp
from tasks.release.load import load_model

DATA = Path(__file__).parent / "data"
BACKBONE_ATOL = 1e-5
LOSS_RTOL = 1e-6
TARGET_ATOL = 1e-6


def _load(name: str) -> dict:
    return torch.load(DATA / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def inputs() -> dict:
    return _load("inputs.pt")


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} vs upstream {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def _check(diffs: dict[str, float]) -> None:
    bad = {k: v for k, v in diffs.items() if not v <= BACKBONE_ATOL}
    assert not bad, f"differs from upstream (max abs): {bad}"


def _official_outputs(model, golden: dict, inputs: dict) -> dict[str, float]:
    out, diffs = golden["outputs"], {}
    runs = {
        "forward_features": (inputs["x"], None),
        "forward_features_masked": (inputs["x"], inputs["masks"]),
        "forward_features_70": (inputs["x70"], None),
        "forward_features_70x42": (inputs["x_rect"], None),
    }
    with torch.no_grad():
        for key, (x, masks) in runs.items():
            got = model.forward_features(x, masks=masks)
            for name, ref in out[key].items():
                diffs[f"{key}.{name}"] = _max_abs(got[name], ref)
        diffs["forward"] = _max_abs(model(inputs["x"]), out["forward_cls"])
        ref_layers = out["intermediate_last_n"]
        layers = model.get_intermediate_layers(inputs["x"], n=len(ref_layers), return_class_token=True)
        assert len(layers) == len(ref_layers)
        for i, ((patches, cls), (ref_patches, ref_cls)) in enumerate(zip(layers, ref_layers)):
            diffs[f"intermediate[{i}].patches"] = _max_abs(patches, ref_patches)
            diffs[f"intermediate[{i}].cls"] = _max_abs(cls, ref_cls)
        (first,) = model.get_intermediate_layers(inputs["x"], n=[0], reshape=True)
        diffs["intermediate_first_reshaped"] = _max_abs(first, out["intermediate_first_reshaped"][0])
    return diffs


def _as_file(tmp_path: Path, name: str, payload: dict) -> str:
    path = tmp_path / name
    torch.save(payload, path)
    return str(path)


OFFICIAL = [
    "official_reg0",
    "official_reg4",
    "official_swiglu_chunked",
    pytest.param("official_heads4", marks=pytest.mark.xfail(
        strict=True, reason="head count is not in the weights: lvd.load infers 2 heads for width 64, "
                            "the upstream model has 4 (outputs differ by up to 1.5)")),
]


@pytest.mark.parametrize("case", OFFICIAL)
def test_official_backbone(case, inputs, tmp_path):
    golden = _load(f"vit_{case}.pt")
    model = lvd.load(_as_file(tmp_path, f"{case}.pth", golden["state_dict"]))
    assert model.num_register_tokens == golden["config"]["num_register_tokens"]
    _check(_official_outputs(model, golden, inputs))


def test_official_heads4_with_num_heads_given(inputs):
    """The xfail above is the inference of the head count only: given it, the load is exact."""
    from models.official_weights import vit_from_official_state_dict

    golden = _load("vit_official_heads4.pt")
    model, _ = vit_from_official_state_dict(golden["state_dict"], num_heads=golden["config"]["num_heads"])
    _check(_official_outputs(model, golden, inputs))


def test_official_teacher_checkpoint_with_heads(inputs, tmp_path):
    """An official eval teacher checkpoint: {"teacher": {"backbone.*" (chunked), "dino_head.*",
    "ibot_head.*"}}, composed from the upstream state dicts."""
    golden = _load("vit_official_swiglu_chunked.pt")
    heads = _load("heads.pt")
    teacher = {f"backbone.{k}": v for k, v in golden["state_dict"].items()}
    teacher |= {f"dino_head.{k}": v for k, v in heads["head_3layer"]["state_dict"].items()}
    teacher |= {f"ibot_head.{k}": v for k, v in heads["head_2layer_nobias"]["state_dict"].items()}
    loaded = load_model(_as_file(tmp_path, "teacher_checkpoint.pth", {"teacher": teacher}))
    _check(_official_outputs(loaded.backbone, golden, inputs))
    assert sorted(loaded.heads) == ["dino_head", "ibot_head"]
    with torch.no_grad():
        for name, case in (("dino_head", "head_3layer"), ("ibot_head", "head_2layer_nobias")):
            _check({name: _max_abs(loaded.heads[name](heads[case]["x"]), heads[case]["logits"])})


@pytest.mark.parametrize("case", ["timm_reg0", "timm_reg4"])
def test_timm_backbone(case, inputs, tmp_path):
    golden = _load(f"vit_{case}.pt")
    model = lvd.load(_as_file(tmp_path, f"{case}.pth", golden["state_dict"]))
    out, diffs = golden["outputs"], {}
    with torch.no_grad():
        for key, x in (("56", inputs["x"]), ("70", inputs["x70"]), ("70x42", inputs["x_rect"])):
            got = model.forward_features(x)
            # timm's forward_features: norm(x) over [CLS, registers, patches]
            tokens = torch.cat([got["x_norm_clstoken"][:, None], got["x_norm_regtokens"],
                                got["x_norm_patchtokens"]], dim=1)
            diffs[f"forward_features_{key}"] = _max_abs(tokens, out[f"forward_features_{key}"])
            diffs[f"pre_logits_{key}"] = _max_abs(got["x_norm_clstoken"], out[f"pre_logits_{key}"])
            if golden["config"]["num_classes"] == 0:
                diffs[f"forward_{key}"] = _max_abs(model(x), out[f"forward_{key}"])
    _check(diffs)


HEADS = [
    "head_3layer",
    "head_2layer_nobias",
    "head_1layer",
]


@pytest.mark.parametrize("case", HEADS)
def test_official_dino_head(case):
    golden = _load("heads.pt")[case]
    head = dino_head_from_state_dict(golden["state_dict"]).eval()
    with torch.no_grad():
        _check({case: _max_abs(head(golden["x"]), golden["logits"])})


# ---- losses ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def losses() -> dict:
    return _load("losses.pt")


def _close(value: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    rel = abs(value.item() - ref.item()) / abs(ref.item())
    assert rel <= LOSS_RTOL, f"{what}: lvd {value.item()!r} vs upstream {ref.item()!r} (rel {rel:.3g})"


def _targets_close(value: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    diff = _max_abs(value, ref)
    assert diff <= TARGET_ATOL, f"{what}: targets differ from upstream by {diff:.3g}"


def test_dino_loss_softmax_centering(losses):
    c, i, ref = losses["config"], losses["inputs"], losses["dino_softmax"]
    centering = SoftmaxCentering(c["K"], momentum=c["center_momentum"])
    targets = [centering(t, c["teacher_temp"]) for t in i["teacher_steps"]]  # step 2 uses step 1's center
    for step, (got, want) in enumerate(zip(targets, ref["targets"])):
        _targets_close(got, want, f"softmax centering step {step}")
    _targets_close(centering.center, ref["center_after"], "center after two steps")
    loss = DINOLoss(c["student_temp"])(i["student_global"], targets[-1], i["student_local"], c["n_global"])
    _close(loss, ref["total_loss"], "DINO loss (local + global terms), softmax centering")


def test_dino_loss_sinkhorn_knopp(losses):
    c, i, ref = losses["config"], losses["inputs"], losses["dino_sinkhorn"]
    targets = sinkhorn_knopp(i["teacher_steps"][0], c["teacher_temp"], c["sk_iterations"])
    _targets_close(targets, ref["targets"], "DINO Sinkhorn-Knopp")
    loss = DINOLoss(c["student_temp"])(i["student_global"], targets, i["student_local"], c["n_global"])
    _close(loss, ref["total_loss"], "DINO loss (local + global terms), Sinkhorn-Knopp")


def test_ibot_loss_softmax_centering(losses):
    c, i = losses["config"], losses["ibot_inputs"]
    ref = losses["ibot_softmax"]
    centering = SoftmaxCentering(c["K"], momentum=c["center_momentum"])
    targets = [centering(t, c["teacher_temp"]) for t in i["teacher_steps"]]
    for step, (got, want) in enumerate(zip(targets, ref["targets"])):
        _targets_close(got, want, f"iBOT softmax centering step {step}")
    _targets_close(centering.center, ref["center_after"].reshape(1, -1), "iBOT center after two steps")
    loss = IBOTPatchLoss(c["student_temp"])(i["student_padded"], targets[-1], i["masks_weight"],
                                             n_images=c["n_global"] * c["B"], n_masked_patches=i["n_masked"])
    _close(loss, ref["loss"], "iBOT loss, softmax centering")


def test_ibot_loss_sinkhorn_knopp(losses):
    c, i = losses["config"], losses["ibot_inputs"]
    ref = losses["ibot_sinkhorn"]
    targets = sinkhorn_knopp(i["teacher_steps"][0], c["teacher_temp"], c["sk_iterations"])
    _targets_close(targets, ref["targets"], "iBOT Sinkhorn-Knopp")
    loss = IBOTPatchLoss(c["student_temp"])(i["student_padded"], targets, i["masks_weight"],
                                             n_images=c["n_global"] * c["B"], n_masked_patches=i["n_masked"])
    _close(loss, ref["loss"], "iBOT loss, Sinkhorn-Knopp")


def test_koleo_loss(losses):
    ref = losses["koleo"]
    koleo = KoLeoLoss()
    values = [koleo(crop) for crop in ref["x"].chunk(2)]
    for crop, (got, want) in enumerate(zip(values, ref["per_crop"])):
        _close(got, want, f"KoLeo crop {crop}")
    _close(0.1 * sum(values), ref["weighted_sum"], "KoLeo weighted sum")

"""Pretraining losses pinned step for step: a refactor of the loop must not change them."""

import pyarrow.parquet as pq
import pytest

from tasks.train.loop import train
from tests.train.conftest import needs_fashion_mnist, tiny_config

pytestmark = needs_fashion_mnist

# (dino_loss, ibot_loss, koleo_loss, total_loss) per step, recorded from the loop before it was shared with
# distillation (tiny_config, 5 steps, every step logged).
PINNED = {
    1: (4.680043697357178, 1.7284964323043823, 0.8198938965797424, 6.490529537200928),
    2: (4.2660675048828125, 3.337735176086426, 1.7944425344467163, 7.783246994018555),
    3: (4.078517436981201, 2.941145420074463, 1.836111307144165, 7.203273773193359),
    4: (3.735907793045044, 2.9477453231811523, 2.1196813583374023, 6.895620822906494),
    5: (3.761251449584961, 2.3857288360595703, 2.2486209869384766, 6.371842384338379),
}


def _losses(run_dir):
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    return {r["step"]: (r["dino_loss"], r["ibot_loss"], r["koleo_loss"], r["total_loss"])
            for r in rows if r.get("total_loss") is not None}


@pytest.mark.parametrize("stop_at", [None, 3])
def test_pretraining_losses_are_pinned(tmp_path, stop_at):
    cfg = tiny_config(optim=dict(total_steps=5), log_every_steps=1)
    run = f"file://{tmp_path}/r"
    if stop_at is not None:
        train(cfg, run, stop_at_step=stop_at, log=lambda m: None)
    train(cfg, run, log=lambda m: None)
    got = _losses(tmp_path / "r")
    assert sorted(got) == sorted(PINNED)
    for step, want in PINNED.items():
        assert got[step] == pytest.approx(want, rel=1e-5), step


def test_official_recipe_decays_tokens_and_trains_prototype_norms():
    """The defaults follow the official recipe; the pinned runs above select the earlier one."""
    from tasks.engine.loop import build_optimizer
    from tasks.train.build import build_ssl

    for official, cfg in ((True, tiny_config(optim=dict(decay_tokens=True), loss=dict(head_train_norm=True))),
                          (False, tiny_config())):
        model = build_ssl(cfg)
        groups = build_optimizer(cfg, model.student).param_groups
        wd = {id(p): g["wd_multiplier"] for g in groups for p in g["params"]}
        backbone = model.student["backbone"]
        assert wd[id(backbone.cls_token)] == wd[id(backbone.pos_embed)] == (1.0 if official else 0.0)
        g = model.student["dino_head"].last_layer.parametrizations.weight.original0
        assert (id(g) in wd) == official

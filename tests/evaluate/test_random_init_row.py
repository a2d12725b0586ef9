"""The random-init row of `lvd pipeline` / `lvd evaluate` is the trained run's own model at random init."""
from pathlib import Path

from lvd.config import load_config
from tasks.evaluate.config import EvaluateConfig
from tasks.evaluate.features import resolve_model
from tasks.release.load import load_model
from tests.distill.test_distill import write_run
from tests.train.conftest import tiny_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_random_init_row_has_the_trained_architecture_not_the_preset(tmp_path):
    # a run without LayerScale, with registers: a preset name would build neither
    run = write_run(tmp_path / "run", tiny_config(model=dict(layerscale=0.0, num_register_tokens=2)))
    ecfg = load_config(EvaluateConfig, CONFIGS / "cpu-tiny.yaml", section="evaluate")
    assert not [b for b in ecfg.baselines if b.startswith("random:")], "the preset names no random-init row"
    with_row = ecfg.model_copy(update={"models": [run]}).with_random_init_of(run)
    assert with_row.baselines == [*ecfg.baselines, f"random:{run}"]
    assert with_row.with_random_init_of(run) == with_row  # added once

    trained = load_model(run).backbone
    random_row = resolve_model(f"random:{run}", 28)
    assert random_row.name == "random:run@0" and random_row.kind == "random"
    shapes = {k: tuple(v.shape) for k, v in random_row.backbone.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in trained.state_dict().items()}
    assert not any("ls1" in k or "gamma" in k for k in shapes) and shapes["register_tokens"][1] == 2
    # the preset the cpu-tiny report used to name is another model: LayerScale 1e-5, no registers
    preset = {k for k in resolve_model("random:vit_pico", 28).backbone.state_dict()}
    assert preset != set(shapes)
    # at random init, not the trained weights
    assert any((a != b).any() for a, b in zip(random_row.backbone.state_dict().values(), trained.state_dict().values()))

"""The high-resolution adaptation phase: config checks, a run whose last steps see larger crops,
and resumes inside (and at the start of) that phase."""

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from flows.config import PipelineConfig
from lvd.config import ConfigError, load_config
from models.patch_embed import PatchEmbed
from tasks.train.build import build_ssl
from tasks.train.checkpoint import latest_checkpoint, load_checkpoint, read_marker
from lvd.config import load_config
from tasks.train.config import TrainConfig
from tasks.train.loop import train
from tasks.train.phases import plan_phases
from tasks.train.report import knn_markdown, phases_markdown
from tests.train.conftest import needs_fashion_mnist, tiny_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# tiny_config trains 6 steps at 28/14 px (2x2 and 1x1 patches of 14 px); the last 3 run at 56/28 px.
HIGH_RES = dict(enabled=True, steps=3, global_crops_size=56, local_crops_size=28, batch_size_per_rank=4)


@pytest.mark.parametrize(
    "high_res, message",
    [
        (dict(global_crops_size=50), r"high_res.global_crops_size \(50\) must be a multiple of model.patch_size \(14\)"),
        (dict(local_crops_size=20), r"high_res.local_crops_size \(20\) must be a multiple of model.patch_size"),
        (dict(global_crops_size=28), r"high_res.global_crops_size \(28\) must be larger than crops.global_crops_size"),
        (dict(steps=6), r"high_res.steps gives 6 high-resolution steps, but the phase must be shorter than the run"),
        (dict(steps=None, fraction=0.05), r"high_res.fraction gives 0 high-resolution steps"),
    ],
)
def test_bad_phase_settings_are_refused_naming_the_key(high_res, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(high_res={**HIGH_RES, **high_res})


def test_the_phase_batch_follows_the_run_s_batch_rule():
    both = {**HIGH_RES, "global_batch_size": 8}
    with pytest.raises(ValueError, match="set high_res.batch_size_per_rank or high_res.global_batch_size, not both"):
        tiny_config(high_res=both)
    with pytest.raises(ValueError, match="this run sets optim.global_batch_size .* give high_res.global_batch_size"):
        tiny_config(optim=dict(global_batch_size=16), high_res=HIGH_RES)
    cfg = tiny_config(optim=dict(global_batch_size=16), high_res={**HIGH_RES, "batch_size_per_rank": None,
                                                                   "global_batch_size": 8})
    assert [p.batch_size_per_rank for p in plan_phases(cfg, world_size=1)] == [16, 8]
    assert [p.batch_size_per_rank for p in plan_phases(cfg, world_size=2)] == [8, 4]
    with pytest.raises(ValueError, match="high_res.global_batch_size=8 over 8 processes leaves 1 image per process"):
        plan_phases(cfg, world_size=8)


def test_cli_override_errors_name_the_full_key_and_a_disabled_phase_is_not_checked():
    with pytest.raises(ConfigError, match=r"train.high_res.batch_size_per_rank: Input should be greater than or equal to 2"):
        load_config(PipelineConfig, None, ["train.high_res.batch_size_per_rank=1"])
    with pytest.raises(ConfigError, match=r"high_res.global_crops_size \(112\) must be larger"):
        load_config(PipelineConfig, "vits14", ["train.high_res.global_crops_size=112"])
    off = tiny_config(high_res={**HIGH_RES, "enabled": False, "steps": 100})
    assert [p.name for p in plan_phases(off)] == ["base"]


def test_full_size_presets_end_at_518_px_for_10k_steps():
    for name in ("vits14", "vitl14", "vitg14"):
        base, high = plan_phases(load_config(TrainConfig, CONFIGS / f"{name}.yaml", section="train"))
        assert (high.name, high.global_crops_size, high.end_step - high.start_step) == ("high_res", 518, 10000), name
        assert base.end_step == high.start_step and base.global_crops_size == 224
    lvd142m = load_config(PipelineConfig, "lvd-142m").train
    assert lvd142m.high_res.enabled and lvd142m.high_res.global_crops_size == 518
    tiny = load_config(TrainConfig, CONFIGS / "cpu-tiny.yaml", section="train")
    assert [p.name for p in plan_phases(tiny)] == ["base"], "the demo preset keeps its time: phase off"
    on = load_config(TrainConfig, CONFIGS / "cpu-tiny.yaml", ["high_res.enabled=true"], section="train")
    assert [(p.name, p.global_crops_size) for p in plan_phases(on)] == [("base", 56), ("high_res", 112)]


class _PatchEmbedInputs:
    """Records the image size and token count of every PatchEmbed call, by training step."""

    def __init__(self):
        self.step = -1
        self.seen: dict[int, set[tuple[int, int]]] = {}

    def before_step(self, step, batch):
        self.step = step

    def __call__(self, module, args, output):
        if isinstance(module, PatchEmbed) and self.step >= 0:
            self.seen.setdefault(self.step, set()).add((args[0].shape[-1], output.shape[1]))

    def __enter__(self):
        self.handle = torch.nn.modules.module.register_module_forward_hook(self)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _rows(run_dir):
    return [r for r in pq.read_table(run_dir / "metrics.parquet").to_pylist() if r.get("total_loss") is not None]


@needs_fashion_mnist
def test_last_steps_run_at_high_resolution(tmp_path):
    cfg = tiny_config(high_res=HIGH_RES)
    logs: list[str] = []
    with _PatchEmbedInputs() as probe:
        summary = train(cfg, f"file://{tmp_path}/run", before_step=probe.before_step, log=logs.append)

    # (image side, patch tokens) the backbones embedded: 28 px -> 4 tokens, 14 -> 1; then 56 -> 16, 28 -> 4
    assert all(probe.seen[s] == {(28, 4), (14, 1)} for s in (0, 1, 2)), probe.seen
    assert all(probe.seen[s] == {(56, 16), (28, 4)} for s in (3, 4, 5)), probe.seen
    switch = [m for m in logs if "high-resolution adaptation starts" in m]
    assert len(switch) == 1 and switch[0].startswith("step 4/6") and "56 px" in switch[0]

    rows = _rows(tmp_path / "run")
    assert [r["phase"] for r in rows] == ["base"] * 3 + ["high_res"] * 3
    assert all(math.isfinite(r[k]) for r in rows for k in ("total_loss", "dino_loss", "ibot_loss", "koleo_loss"))
    # schedules run on over the same step count: the LR keeps decaying across the switch
    lrs = [r["lr"] for r in rows]
    assert lrs[2] > lrs[3] > lrs[5]

    base, high = summary["phases"]
    assert (high["name"], high["global_crops_size"], high["local_crops_size"], high["global_batch"]) == (
        "high_res", 56, 28, 4)
    assert math.isfinite(high["final"]["total_loss"]) and high["images_per_s"] > 0
    table = phases_markdown(summary).splitlines()
    assert table[2].startswith("| base | 1-3 | 28 px | 14 px | 8 |")
    assert table[3].startswith("| high_res | 4-6 | 56 px | 28 px | 4 |")

    ref = latest_checkpoint(f"file://{tmp_path}/run")
    assert read_marker(ref)["phase"]["name"] == "high_res"
    # the stored positional embeddings stay on the base grid (2x2 patches + CLS)
    model = build_ssl(cfg)
    load_checkpoint(ref, model, None)
    assert model.teacher["backbone"].pos_embed.shape[1] == 1 + 4


@needs_fashion_mnist
@pytest.mark.parametrize("every, written", [(2, 4), (3, 3)], ids=["inside-the-phase", "at-the-switch"])
def test_resume_continues_at_high_resolution_step_for_step(tmp_path, every, written):
    cfg = tiny_config(high_res=HIGH_RES, checkpoint=dict(every_steps=every))
    train(cfg, f"file://{tmp_path}/full", log=lambda m: None)
    killed = f"file://{tmp_path}/killed"
    train(cfg, killed, stop_at_step=5, log=lambda m: None)
    assert latest_checkpoint(killed).step == written

    with _PatchEmbedInputs() as probe:
        train(cfg, killed, before_step=probe.before_step, log=lambda m: None)
    assert sorted(probe.seen) == list(range(written, 6))
    assert all(probe.seen[s] == {(56, 16), (28, 4)} for s in probe.seen), probe.seen
    full, resumed = _rows(tmp_path / "full"), _rows(tmp_path / "killed")
    assert len(full) == len(resumed) == 6
    assert [r["phase"] for r in resumed] == [r["phase"] for r in full]
    for a, b in zip(full, resumed):
        assert (a["total_loss"], a["dino_loss"], a["ibot_loss"]) == (b["total_loss"], b["dino_loss"], b["ibot_loss"])


@needs_fashion_mnist
def test_resume_refuses_a_config_that_moves_the_checkpoint_out_of_its_phase(tmp_path):
    cfg = tiny_config(high_res=HIGH_RES)
    run = f"file://{tmp_path}/run"
    train(cfg, run, stop_at_step=5, log=lambda m: None)
    changed = tiny_config(high_res={**HIGH_RES, "global_crops_size": 42})
    with pytest.raises(ValueError, match=r"step-000004 was written in the high_res phase .*global_crops_size=56"):
        train(changed, run, log=lambda m: None)
    with pytest.raises(ValueError, match=r"puts that step in the base phase"):
        train(tiny_config(), run, log=lambda m: None)


def test_knn_table_names_the_phase_of_each_evaluation():
    summary = {"phases": [{"name": "base", "end_step": 90}, {"name": "high_res", "end_step": 100}],
               "knn": {"0": {"knn_top1_k20": 0.1}, "90": {"knn_top1_k20": 0.5}, "100": {"knn_top1_k20": 0.6}}}
    lines = knn_markdown(summary).splitlines()
    assert lines[0] == "| step | phase | top-1 k=20 | eff. rank |"
    assert lines[2:] == ["| 0 | base | 10.0% |  |", "| 90 | base | 50.0% |  |", "| 100 | high_res | 60.0% |  |"]

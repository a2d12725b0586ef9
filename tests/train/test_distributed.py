"""Training over several processes: torchrun commands, world checks, and the same run at any world size."""

import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from tasks.train.build import build_augmentation, build_collate, build_ssl
from tasks.train.checkpoint import latest_checkpoint, read_marker
from tasks.train.data import FashionMnistSource
from tasks.train.global_batches import GlobalBatchLoader
from tasks.train.launch import LaunchError, LaunchPlan, launch, plan_launch, torchrun_arguments, torchrun_command
from tasks.train.loop import train
from tests.train.conftest import needs_fashion_mnist, tiny_config

QUIET = dict(log=lambda m: None)


def test_single_machine_runs_torchrun_standalone():
    plan = plan_launch(tiny_config(device="cpu", nproc=2), env={})
    assert plan == LaunchPlan(nnodes=1, nproc_per_node=2, node_rank=0, device="cpu")
    assert plan_launch(tiny_config(device="cpu"), env={}).in_process
    cmd = torchrun_command(plan, "/c.json", "file:///r", "/s.json", stop_at_step=3)
    assert cmd[1:9] == ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2", "-m"]
    assert cmd[9:] == ["tasks.train.entry", "--config", "/c.json", "--run-uri", "file:///r", "--summary", "/s.json",
                       "--stop-at-step", "3"]


def test_kubernetes_indexed_job_env_gives_a_c10d_rendezvous():
    env = {"NNODES": "4", "JOB_COMPLETION_INDEX": "2", "MASTER_ADDR": "lvd-train-0.lvd-train", "MASTER_PORT": "29400",
           "WORLD_SIZE": "32"}
    plan = plan_launch(tiny_config(device="cuda"), env=env, gpus=8)
    assert (plan.nnodes, plan.nproc_per_node, plan.node_rank, plan.world_size) == (4, 8, 2, 32)
    assert torchrun_arguments(plan) == [
        "--nnodes", "4", "--nproc-per-node", "8",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "lvd-train-0.lvd-train:29400", "--rdzv-id", "lvd-train",
    ]
    # the config wins over the environment; torchrun's own PET_* names are read too
    cfg = tiny_config(device="cuda", nproc=4, launch=dict(nnodes=2, rdzv_id="run-7", max_restarts=3))
    plan = plan_launch(cfg, env={"NNODES": "9", "PET_NODE_RANK": "1", "PET_RDZV_ENDPOINT": "head:29400"}, gpus=8)
    assert torchrun_arguments(plan) == [
        "--nnodes", "2", "--nproc-per-node", "4", "--rdzv-backend", "c10d", "--rdzv-endpoint", "head:29400",
        "--rdzv-id", "run-7", "--max-restarts", "3",
    ]
    assert plan.node_rank == 1


def test_static_rendezvous_orders_machines_by_node_rank():
    cfg = tiny_config(device="cuda", launch=dict(nnodes=2, node_rank=1, rdzv_backend="static",
                                                 rdzv_endpoint="10.0.0.1:29500"))
    assert torchrun_arguments(plan_launch(cfg, env={}, gpus=2)) == [
        "--nnodes", "2", "--nproc-per-node", "2", "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29500",
    ]
    plan = plan_launch(tiny_config(device="cpu", nproc=2), env={"NNODES": "3", "NODE_RANK": "2", "MASTER_ADDR": "h"})
    assert plan.rdzv_endpoint == "h:29500" and plan.world_size == 6


@pytest.mark.parametrize("over,env,message", [
    ({}, {"NNODES": "2"}, "needs a rendezvous address: set launch.rdzv_endpoint"),
    ({}, {"NNODES": "4", "JOB_COMPLETION_INDEX": "4", "MASTER_ADDR": "h"}, "JOB_COMPLETION_INDEX=4 is not a node"),
    ({}, {"WORLD_SIZE": "8"}, "WORLD_SIZE=8 in the environment, but 1 nodes x 2 processes make 2"),
    ({}, {"NODE_RANK": "one"}, "NODE_RANK='one' is not an integer"),
])
def test_bad_launch_settings_are_refused_naming_them(over, env, message):
    with pytest.raises(LaunchError, match=message):
        plan_launch(tiny_config(device="cpu", nproc=2, **over), env=env)


def test_bad_launch_config_is_refused_naming_the_key():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="launch.rdzv_endpoint must be host:port"):
        tiny_config(launch=dict(rdzv_endpoint="head"))
    with pytest.raises(ValidationError, match="launch.node_rank=2 must be below launch.nnodes=2"):
        tiny_config(launch=dict(nnodes=2, node_rank=2))


def test_a_world_the_global_batch_does_not_split_over_is_refused_before_any_process(tmp_path):
    cfg = tiny_config(device="cpu", nproc=3, optim=dict(global_batch_size=16))
    with pytest.raises(ValueError, match="optim.global_batch_size=16 does not split over 3 processes"):
        launch(cfg, f"file://{tmp_path}/run", **QUIET)
    assert not (tmp_path / "run").exists()


@needs_fashion_mnist
def test_a_checkpoint_read_with_other_streams_is_refused_before_training(tmp_path):
    run = f"file://{tmp_path}/run"
    train(tiny_config(optim=dict(total_steps=2), data=dict(streams=4)), run, **QUIET)
    assert read_marker(latest_checkpoint(run))["data"] == {
        "streams": 4, "global_batch": 8, "step": 2, "positions": [4, 4, 4, 4]}
    before = (tmp_path / "run" / "metrics.parquet").read_bytes()
    with pytest.raises(ValueError, match="data.streams=4, this config has data.streams=8"):
        launch(tiny_config(optim=dict(total_steps=4), data=dict(streams=8)), run, **QUIET)
    assert latest_checkpoint(run).step == 2 and (tmp_path / "run" / "metrics.parquet").read_bytes() == before


# ---- the same run at any world size (torchrun, gloo, FSDP2) ----------------------------------------------------


def same_run(nproc: int):
    """One recipe whose cross-process reductions all matter: Sinkhorn-Knopp (all-reduced sums) on the DINO
    and on the separate iBOT head's targets, DINO/iBOT means averaged over processes, gradients averaged by
    FSDP2, global gradient-norm clipping; 16 images a step however many processes share them.

    Stochastic depth is off: its subset of kept crops is drawn per process from the process RNG, out of
    each process's own crops, so like KoLeo it depends on the split by design. KoLeo runs at a weight too
    small to move the weights: its value is logged (and checked), the trajectories stay comparable.
    """
    return tiny_config(
        device="cpu",
        nproc=nproc,
        model=dict(drop_path_rate=0.0),
        loss=dict(centering="sinkhorn_knopp", ibot_separate_head=True, ibot_prototypes=48, ibot_bottleneck_dim=16,
                  koleo_weight=1e-9),
        optim=dict(global_batch_size=16, total_steps=4),
        checkpoint=dict(every_steps=2, keep=2),
        data=dict(streams=4),
    )


COMPARED = ("dino_loss", "ibot_loss", "total_loss", "teacher_entropy", "grad_norm_backbone", "grad_norm_dino_head",
            "grad_norm_ibot_head")


def _losses(run_dir) -> dict[int, dict[str, float]]:
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    return {r["step"]: r for r in rows if r.get("total_loss") is not None}


def _assert_same(a: dict, b: dict, steps, rel=1e-5):  # measured: at most 6e-7 apart
    for step in steps:
        for key in COMPARED:
            assert a[step][key] == pytest.approx(b[step][key], rel=rel, abs=1e-6), (step, key, a[step][key], b[step][key])


def _koleo_of_rows(cfg, rank_rows: list[range]) -> float:
    """KoLeo of the first step's batch at initial weights, computed on each given row range and averaged."""
    torch.manual_seed(cfg.seed)
    model = build_ssl(cfg).train()
    loader = GlobalBatchLoader(FashionMnistSource(), build_augmentation(cfg), build_collate(cfg), 16, cfg.seed,
                               streams=cfg.data.streams)
    batch = next(loader)
    crops = [batch["collated_global_crops"], batch["collated_local_crops"]]
    with torch.no_grad():  # the student's view, masked as in the training step
        out = model.student["backbone"].forward_features(crops, masks=[batch["collated_masks"], None])
    cls = out[0]["x_norm_clstoken"]
    values = [sum(model.koleo_loss(c[rows]) for c in cls.chunk(2)) for rows in rank_rows]
    return float(sum(values) / len(values))


def _truncate_to(src, dst, step):
    """A copy of a finished run as it stood after ``step`` (newer checkpoints and the summary removed)."""
    shutil.copytree(src, dst)
    for ckpt in (dst / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    (dst / "summary.json").unlink()


@needs_fashion_mnist
@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_across_world_sizes(tmp_path):
    one = launch(same_run(1), f"file://{tmp_path}/one", **QUIET)
    two = launch(same_run(2), f"file://{tmp_path}/two", **QUIET)
    assert (one["world_size"], two["world_size"], one["global_batch"], two["global_batch"]) == (1, 2, 16, 16)
    ref, dist = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    _assert_same(dist, ref, steps=(1, 2, 3, 4))
    assert dist[4]["dino_loss"] != dist[1]["dino_loss"]  # it trained

    # KoLeo is per process (as in DINOv2): each process's own 8 images, averaged, vs 16 in one process
    halves = _koleo_of_rows(same_run(1), [range(0, 8), range(8, 16)])
    whole = _koleo_of_rows(same_run(1), [range(0, 16)])
    assert dist[1]["koleo_loss"] == pytest.approx(halves, rel=1e-5)
    assert ref[1]["koleo_loss"] == pytest.approx(whole, rel=1e-5) and abs(halves - whole) > 1e-3

    marker = read_marker(latest_checkpoint(f"file://{tmp_path}/two"))
    assert marker["world_size"] == 2 and "extra-rank1.pt" in marker["files"]

    # 1 -> 2 processes: a one-process run stopped after step 2 goes on with two
    stopped = launch(same_run(1), f"file://{tmp_path}/up", stop_at_step=2, **QUIET)
    assert stopped["stopped_at"] == 2
    up = launch(same_run(2), f"file://{tmp_path}/up", **QUIET)
    assert up["world_size"] == 2 and up["steps"] == 4
    _assert_same(_losses(tmp_path / "up"), ref, steps=(1, 2, 3, 4))

    # 2 -> 1 process: the two-process run as it stood after step 2 goes on in one
    _truncate_to(tmp_path / "two", tmp_path / "down", step=2)
    down = launch(same_run(1), f"file://{tmp_path}/down", **QUIET)
    assert down["world_size"] == 1 and down["steps"] == 4
    _assert_same(_losses(tmp_path / "down"), ref, steps=(3, 4))
    assert json.loads((tmp_path / "down" / "summary.json").read_text())["steps"] == 4

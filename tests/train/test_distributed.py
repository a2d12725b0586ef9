import json

import pytest

from tasks.train.checkpoint import latest_checkpoint
from tasks.train.launch import launch, plan_processes, torchrun_command
from tests.train.conftest import needs_fashion_mnist, tiny_config


def test_plan_on_cpu_host():
    assert plan_processes(tiny_config(device="cpu")) == (1, "cpu")
    assert plan_processes(tiny_config(device="cpu", nproc=3)) == (3, "cpu")
    cmd = torchrun_command(2, "/c.json", "file:///r", "/s.json")
    assert cmd[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    assert cmd[7:] == ["tasks.train.entry", "--config", "/c.json", "--run-uri", "file:///r", "--summary", "/s.json"]


@needs_fashion_mnist
@pytest.mark.slow
def test_two_cpu_processes_with_fsdp2_then_resume_in_one(tmp_path):
    run = f"file://{tmp_path}/run"
    two = launch(tiny_config(device="cpu", nproc=2, optim=dict(total_steps=2)), run, log=lambda m: None)
    assert two["world_size"] == 2 and two["global_batch"] == 16 and two["steps"] == 2
    marker = json.loads((tmp_path / "run" / "checkpoints" / "step-000002" / "_COMPLETE.json").read_text())
    assert marker["world_size"] == 2 and "extra-rank1.pt" in marker["files"]
    # the world-size-independent checkpoint continues in a single process
    one = launch(tiny_config(device="cpu", nproc=1, optim=dict(total_steps=3)), run, log=lambda m: None)
    assert one["world_size"] == 1 and one["steps"] == 3 and latest_checkpoint(run).step == 3
    assert two["final"]["dino_loss"] > 0 and one["final"]["dino_loss"] > 0

import pytest
import torch

from tasks.train.checkpoint import MARKER, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint


def _model_and_opt(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model.register_buffer("center", torch.randn(1, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


@pytest.mark.parametrize("where", ["file", pytest.param("s3", marks=pytest.mark.slow)])
def test_save_load_roundtrip_and_pruning(where, tmp_path, request):
    run = f"file://{tmp_path}/run" if where == "file" else request.getfixturevalue("s3_root") + "/runs/r"
    model, opt = _model_and_opt(0)
    for step in (1, 2, 3):
        save_checkpoint(run, step, model, opt, {"data": {"consumed": step}}, keep=2)
    assert [c.step for c in list_checkpoints(run)] == [2, 3]
    other, other_opt = _model_and_opt(1)
    extra = load_checkpoint(latest_checkpoint(run), other, other_opt)
    assert extra == {"data": {"consumed": 3}}
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict()["state"], other_opt.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)


def test_a_checkpoint_without_marker_is_ignored(tmp_path):
    run = f"file://{tmp_path}/run"
    model, opt = _model_and_opt(0)
    save_checkpoint(run, 5, model, opt, {})
    ref = save_checkpoint(run, 6, model, opt, {})
    (tmp_path / "run" / "checkpoints" / "step-000006" / MARKER).unlink()
    (tmp_path / "run" / "checkpoints" / ".tmp-step-000007-1").mkdir()
    assert latest_checkpoint(run).step == 5 and ref.step == 6

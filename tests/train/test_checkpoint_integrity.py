import pytest
import torch

from tasks.train.checkpoint import CheckpointDamaged, latest_checkpoint, load_checkpoint, load_newest_good, save_checkpoint


def _model_and_opt(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 64)
    return model, torch.optim.AdamW(model.parameters())


def _distcp(tmp_path, step):
    return next((tmp_path / "run" / "checkpoints" / f"step-{step:06d}").glob("*.distcp"))


def _saved(tmp_path):
    run = f"file://{tmp_path}/run"
    model, opt = _model_and_opt(0)
    for step in (1, 2):
        save_checkpoint(run, step, model, opt, {"step": step})
    return run


def test_flipped_bytes_are_refused_naming_the_file(tmp_path):
    run = _saved(tmp_path)
    f = _distcp(tmp_path, 2)
    data = bytearray(f.read_bytes())
    data[100:164] = bytes(b ^ 0xFF for b in data[100:164])
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointDamaged, match=rf"{f.name}: sha256 .*expected"):
        load_checkpoint(latest_checkpoint(run), *_model_and_opt(1))


def test_truncated_file_is_refused_with_sizes(tmp_path):
    run = _saved(tmp_path)
    f = _distcp(tmp_path, 2)
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[: size // 2])
    with pytest.raises(CheckpointDamaged, match=rf"{f.name}: size {size // 2} bytes, expected {size}"):
        load_checkpoint(latest_checkpoint(run), *_model_and_opt(1))


def test_resume_skips_the_damaged_newest_with_a_warning(tmp_path):
    run = _saved(tmp_path)
    _distcp(tmp_path, 2).write_bytes(b"")
    warnings = []
    model, opt = _model_and_opt(1)
    ref, extra = load_newest_good(run, lambda r: load_checkpoint(r, model, opt), warnings.append)
    assert ref.step == 1 and extra == {"step": 1}
    assert len(warnings) == 1 and "step-000002" in warnings[0]

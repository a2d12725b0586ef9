"""Model worker processes: results come back in input order, and a worker's failure names its cause."""

import dataclasses
import shutil

import pytest

from tasks.safety.config import SafetyConfig
from tasks.safety.pool import BatchRunner, WorkerFailed
from tasks.safety.process import resolve_models
from tests.safety.pool import jpeg, photo

CFG = SafetyConfig(nsfw={"enabled": False}, faces={"detectors": ["builtin:haar-frontal-alt2"], "scale_factor": 1.3},
                   workers=2)


def test_batches_come_back_in_order_across_workers():
    names = ["astronaut", "coffee", "chelsea", "rocket", "moon", "coins", "astronaut"]
    items = [(f"k{i}", jpeg(photo(n)[::2, ::2])) for i, n in enumerate(names)]
    batches = [items[i:i + 2] for i in range(0, len(items), 2)]
    with BatchRunner(CFG, resolve_models(CFG)) as runner:
        results = [r for batch in runner.imap(batches) for r in batch.results]
    assert [r.key for r in results] == [k for k, _ in items]
    assert [bool(r.boxes) for r in results] == [n == "astronaut" for n in names]


def test_a_worker_that_cannot_load_its_model_fails_with_the_reason(tmp_path):
    models = resolve_models(CFG)
    moved = tmp_path / "gone.xml"
    shutil.copy(models.faces[0].path, moved)
    broken = dataclasses.replace(models, faces=(dataclasses.replace(models.faces[0], path=str(moved)),))
    moved.unlink()
    with pytest.raises(WorkerFailed, match="not a loadable OpenCV cascade"):
        with BatchRunner(CFG.model_copy(update={"workers": 1}), broken):
            pass

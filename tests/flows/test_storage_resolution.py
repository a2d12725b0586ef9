"""Storage resolution of every flow: a value the parameters name > the worker's environment > the default;
overrides change only what they name."""
from __future__ import annotations

from flows.config import CurateConfig
from flows.stages import with_effective_storage
from lvd.config import override_model


def test_environment_root_wins_over_the_default_but_not_over_a_named_value(monkeypatch, tmp_path):
    monkeypatch.setenv("LVD_ROOT", str(tmp_path / "from-env"))
    assert with_effective_storage(CurateConfig()).storage.root == str(tmp_path / "from-env")
    named = CurateConfig.model_validate({"storage": {"root": "file://./lvd-data"}})
    assert with_effective_storage(named).storage.root == "file://./lvd-data"


def test_overrides_apply_onto_the_parameters_and_keep_unset_fields_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("LVD_ROOT", str(tmp_path / "env"))
    base = CurateConfig.model_validate({"dataset": "lvd-demo", "crawl": {"pages_per_part": 20}})
    changed = override_model(base, ["crawl.max_concurrency=8"])
    assert (changed.dataset, changed.crawl.pages_per_part, changed.crawl.max_concurrency) == ("lvd-demo", 20, 8)
    assert with_effective_storage(changed).storage.root == str(tmp_path / "env")


def test_a_full_dump_with_nulls_keeps_the_workers_endpoint(monkeypatch, tmp_path):
    """A deployment run and the UI form send every field; ``endpoint_url: null`` means "not given"."""
    monkeypatch.setenv("LVD_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    sent = CurateConfig.model_validate({"storage": {"root": "s3://bucket/curated"}}).model_dump(mode="json")
    assert sent["storage"]["endpoint_url"] is None
    effective = with_effective_storage(CurateConfig.model_validate(sent)).storage
    assert (effective.root, effective.endpoint_url) == ("s3://bucket/curated", "http://127.0.0.1:9")
    named = CurateConfig.model_validate({"storage": {"root": "s3://b/c", "endpoint_url": "http://127.0.0.1:8"}})
    assert with_effective_storage(named).storage.endpoint_url == "http://127.0.0.1:8"

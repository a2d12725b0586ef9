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


def _cpu_tiny_deployment_cfg() -> dict:
    from flows.deployments import DEPLOYMENTS, parameters_for

    return parameters_for(next(d for d in DEPLOYMENTS if (d.flow, d.name) == ("curate-lvd", "cpu-tiny")))["cfg"]


def test_a_partial_cfg_replaces_only_what_it_names_in_the_deployments(monkeypatch, tmp_path):
    """Prefect hands a run's `cfg` over whole; the flow lays it over its deployment's section by section."""
    from flows.parameters import onto_deployment

    monkeypatch.setenv("LVD_ROOT", str(tmp_path / "env"))
    base = _cpu_tiny_deployment_cfg()
    sent = {"version": "v2", "inputs": ["a.warc.gz"],
            "crawl": {"pages_per_part": 1, "resolve": {"demo.test": "127.0.0.1:1"}},
            "retrieve": {"kmeans": {"n_iter": 3}}, "safety": {"nsfw": {"enabled": False}}}
    cfg = onto_deployment(CurateConfig.model_validate(sent), base)
    # named: taken from the run
    assert (cfg.version, cfg.inputs, cfg.crawl.pages_per_part) == ("v2", ["a.warc.gz"], 1)
    assert (cfg.retrieve.kmeans.n_iter, cfg.safety.nsfw.enabled) == (3, False)
    assert cfg.crawl.resolve == {"demo.test": "127.0.0.1:1"}
    # not named: the deployment's, at every depth (not the model's defaults)
    assert cfg.dataset == base["dataset"] != CurateConfig().dataset
    assert cfg.crawl.max_concurrency == base["crawl"]["max_concurrency"] != CurateConfig().crawl.max_concurrency
    assert cfg.retrieve.kmeans.n_clusters == base["retrieve"]["kmeans"]["n_clusters"]
    assert cfg.safety.faces.detectors == base["safety"]["faces"]["detectors"]
    assert cfg.dedup.copy_threshold == base["dedup"]["copy_threshold"]
    # neither names a root: the worker's environment still decides
    assert with_effective_storage(cfg).storage.root == str(tmp_path / "env")
    # a run that sends the deployment's own cfg (or none) runs exactly the deployment's
    same = onto_deployment(CurateConfig.model_validate(base), base)
    assert same == CurateConfig.model_validate(base)
    assert same.model_dump(exclude_unset=True) == CurateConfig.model_validate(base).model_dump(exclude_unset=True)
    # outside a deployment's run there is nothing to lay the cfg over
    from flows.parameters import deployment_cfg

    assert deployment_cfg() is None


def test_merge_onto_recurses_into_sections_only():
    from lvd.config import merge_onto

    base = {"crawl": {"resolve": {"a": "1", "b": "2"}, "pages_per_part": 5, "max_per_host": 3},
            "inputs": ["x", "y"], "dataset": "d"}
    change = {"crawl": {"resolve": {"c": "3"}, "pages_per_part": 1}, "inputs": ["z"]}
    assert merge_onto(CurateConfig, base, change) == {
        "crawl": {"resolve": {"c": "3"}, "pages_per_part": 1, "max_per_host": 3},  # a mapping field is a value
        "inputs": ["z"], "dataset": "d"}
    assert base["crawl"]["pages_per_part"] == 5  # base untouched
    assert merge_onto(CurateConfig, base, {"crawl": None}) == {**base, "crawl": None}  # then validation refuses it

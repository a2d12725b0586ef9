"""The run form's field order survives a PostgreSQL-backed server.

The server stores a deployment's parameter schema as jsonb, which returns object keys shortest first;
the UI orders a form's fields by each property's `position` (then by key order only where none is
given). These tests shuffle the keys the way jsonb does and read the order back the way the UI does.
"""
from __future__ import annotations

import importlib

import pytest
from prefect.utilities.callables import parameter_schema

from flows.deployments import DEPLOYMENTS

CURATE_ORDER = ["storage", "dataset", "version", "inputs", "crawl", "safety", "dedup", "embed", "retrieve",
                "shard", "runner", "refresh"]


def jsonb(value):
    """What PostgreSQL's jsonb hands back: object keys sorted by length, then bytewise."""
    if isinstance(value, dict):
        return {k: jsonb(value[k]) for k in sorted(value, key=lambda k: (len(k.encode()), k.encode()))}
    if isinstance(value, list):
        return [jsonb(v) for v in value]
    return value


def ui_order(properties: dict) -> list[str]:
    """The Prefect UI's SchemaFormFields: a stable sort on `position`, missing positions last."""
    return [k for k, _ in sorted(properties.items(), key=lambda kv: kv[1].get("position", float("inf")))]


def flow_schema(entrypoint: str) -> dict:
    path, name = entrypoint.split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
    return jsonb(parameter_schema(flow).model_dump_for_openapi())


ENTRYPOINTS = sorted({d.entrypoint for d in DEPLOYMENTS})


@pytest.fixture(scope="module")
def curate_schema() -> dict:
    return flow_schema("flows/curate_lvd.py:curate_lvd")


def test_jsonb_order_alone_would_open_the_form_with_srcset(curate_schema):
    crawl = curate_schema["definitions"]["CrawlConfig"]["properties"]
    assert list(crawl)[0] == "srcset" and list(curate_schema["definitions"]["CurateConfig"]["properties"])[-1] != "storage"


def test_curate_form_reads_where_what_inputs_then_stages_in_pipeline_order(curate_schema):
    assert ui_order(curate_schema["definitions"]["CurateConfig"]["properties"]) == CURATE_ORDER


def test_crawl_fields_keep_their_declared_order(curate_schema):
    from tasks.crawl.config import CrawlConfig

    order = ui_order(curate_schema["definitions"]["CrawlConfig"]["properties"])
    assert order == list(CrawlConfig.model_fields) and order[0] != "srcset"


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_every_property_of_every_model_has_a_distinct_position(entrypoint):
    schema = flow_schema(entrypoint)
    models = {"(flow parameters)": schema, **schema.get("definitions", {})}
    for name, model in models.items():
        properties = model.get("properties") or {}
        positions = [p.get("position") for p in properties.values()]
        assert None not in positions, (entrypoint, name, [k for k, p in properties.items() if "position" not in p])
        assert sorted(positions) == list(range(len(positions))), (entrypoint, name, positions)


def test_pipeline_form_puts_training_after_curation():
    schema = flow_schema("flows/pipeline.py:lvd_pipeline")
    assert ui_order(schema["definitions"]["PipelineConfig"]["properties"]) == CURATE_ORDER + [
        "train", "distill", "evaluate"]


@pytest.mark.parametrize("flow_module, model", [("flows.train_dinov2", "TrainFlowConfig"),
                                                ("flows.distill_dinov2", "DistillFlowConfig"),
                                                ("flows.evaluate_dinov2", "EvaluateFlowConfig")])
def test_run_flows_start_with_storage(flow_module, model):
    cls = getattr(importlib.import_module(flow_module), model)
    props = jsonb(cls.model_json_schema())["properties"]
    assert ui_order(props)[0] == "storage"


def test_null_choices_say_what_none_means(curate_schema):
    """A `X | None` field is a choice of tabs in the UI, labelled by each branch's title: the null one
    says what None means (from the field's description), not only 'Property is type "None"'."""
    from flows.form import null_choice_label

    defs = curate_schema["definitions"]
    labels = {}
    for model, schema in defs.items():
        for name, prop in (schema.get("properties") or {}).items():
            for branch in prop.get("anyOf") or []:
                if branch.get("type") == "null":
                    labels[f"{model}.{name}"] = branch.get("title")
    assert labels and None not in labels.values(), [k for k, v in labels.items() if v is None]
    assert labels["CrawlConfig.decode_workers"] == "Default: one per CPU core"
    assert labels["StorageConfig.endpoint_url"] == "Default: AWS"
    assert labels["RefreshConfig.from_version"] == "Default: a full build from every input"
    assert labels["RunnerConfig.address"] == "Default: starts a local cluster for the run"
    assert labels["DedupConfig.copy_model"] == "None: skip copy detection"  # None is a choice, not the default
    assert all(len(v) <= len("Default: ") + 48 for v in labels.values()), labels
    assert null_choice_label("Threads; None: Prefect's default (see its docs).") == "Default: Prefect's default (see its docs)"
    assert null_choice_label("A column, if any.") == "Default"


def test_storage_shows_no_default_a_form_would_send(curate_schema):
    """The UI fills each default its schema shows into the run's parameters, and a storage value a run
    names wins over the worker's LVD_ROOT / LVD_S3_*: so storage shows none, and says what empty means."""
    from storage.config import FIELD_ENV_VARS, StorageConfig

    storage = curate_schema["definitions"]["StorageConfig"]["properties"]
    assert [k for k, p in storage.items() if "default" in p] == []
    assert "Empty: the worker's LVD_ROOT, else file://./lvd-data." in storage["root"]["description"]
    for name, var in FIELD_ENV_VARS.items():
        assert var in storage[name]["description"] and name in StorageConfig.model_fields
    assert StorageConfig().root == "file://./lvd-data"  # the model keeps its defaults

"""How a flow run's `cfg` parameter becomes the settings it runs with.

Prefect merges a run's parameters onto its deployment's one top-level name at a time, so a run that
names `cfg: {"version": "v2"}` would lose every other setting of the deployment's preset. A flow
therefore lays the `cfg` its run received over its deployment's own `cfg`, section by section (only
what the run named replaces the deployment's), then applies the run's dotted `overrides`, then
resolves storage from the worker's environment (`flows.stages.use_storage`).
"""
from __future__ import annotations

from typing import TypeVar

from prefect.context import FlowRunContext
from pydantic import BaseModel

from flows.stages import with_effective_storage
from lvd.config import merge_onto, override_model, validate

M = TypeVar("M", bound=BaseModel)
CFG = "cfg"


def deployment_cfg() -> dict | None:
    """The `cfg` parameter of the deployment this flow run was created from (None: the run is not a
    deployment's own run, e.g. a local call or a subflow, or the deployment names no `cfg`)."""
    ctx = FlowRunContext.get()
    deployment_id = getattr(getattr(ctx, "flow_run", None), "deployment_id", None)
    if deployment_id is None:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        parameters = client.read_deployment(deployment_id).parameters or {}
    value = parameters.get(CFG)
    return value if isinstance(value, dict) else None


def onto_deployment(cfg: M, base: dict | None) -> M:
    """``cfg`` with the fields it leaves unset (pydantic's ``model_fields_set``, at every depth) taken
    from ``base``, the deployment's `cfg`."""
    if not base:
        return cfg
    named = cfg.model_dump(mode="json", exclude_unset=True)
    return validate(type(cfg), merge_onto(type(cfg), base, named))


def resolve_cfg(cfg: M, overrides: list[str] | None = None) -> M:
    """A flow's settings: the run's `cfg` over its deployment's, then ``overrides``, then storage."""
    return with_effective_storage(override_model(onto_deployment(cfg, deployment_cfg()), overrides))

"""The order of the fields in the Prefect UI's run form.

The UI lays a parameter form out by each property's `position` in the JSON schema, and by the
order of `properties` only where no position is given. That order does not survive a
PostgreSQL-backed server: the schema is stored as jsonb, which hands its keys back shortest
first (`srcset` before `pages_per_part`, `storage` at the bottom). Prefect sets `position` on the
flow's own parameters (`cfg`, `overrides`) but not inside the models they hold, so
`add_form_positions` makes every model reachable from a flow parameter write its fields'
declaration order into its schema: a form reads the way the models are declared, whatever the
database does to the keys.
"""
from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel


def write_positions(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """`json_schema_extra` hook: each property gets `position` = its field's place in ``cls``."""
    properties = schema.get("properties") or {}
    for position, (name, field) in enumerate(cls.model_fields.items()):
        for key in (field.alias, name):  # Prefect renders schemas by alias
            if key and key in properties:
                properties[key]["position"] = position
                break


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (``X``, ``X | None``, ``list[X]``, ``dict[str, X]``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _with_positions(extra: Any):
    if extra is None or extra is write_positions or getattr(extra, "writes_positions", False):
        return write_positions if extra is None else extra

    def both(schema: dict[str, Any], cls: type[BaseModel]) -> None:
        if isinstance(extra, dict):
            schema.update(extra)
        elif callable(extra):
            try:
                extra(schema, cls)
            except TypeError:
                extra(schema)
        write_positions(schema, cls)

    both.writes_positions = True
    return both


def add_form_positions(*models: type[BaseModel]) -> None:
    """Give ``models`` and every model nested in their fields a `position` on each property."""
    seen: set[type[BaseModel]] = set()
    todo = list(models)
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        cls.model_config["json_schema_extra"] = _with_positions(cls.model_config.get("json_schema_extra"))
        for field in cls.model_fields.values():
            todo.extend(_models_in(field.annotation))

"""The order of the fields in the Prefect UI's run form.

The UI lays a parameter form out by each property's `position` in the JSON schema, and by the
order of `properties` only where no position is given. That order does not survive a
PostgreSQL-backed server: the schema is stored as jsonb, which hands its keys back shortest
first (`srcset` before `pages_per_part`, `storage` at the bottom). Prefect sets `position` on the
flow's own parameters (`cfg`, `overrides`) but not inside the models they hold, so
`add_form_positions` makes every model reachable from a flow parameter write its fields'
declaration order into its schema: a form reads the way the models are declared, whatever the
database does to the keys.

A field typed ``X | None`` is an `anyOf` the UI shows as tabs, one per branch, labelled by the branch's
`title` (else its type: "integer | null", the null tab saying only 'Property is type "None"'). The same
hook titles the null branch with what None means, read from the field's description ("None: one per
CPU core" -> "Default: one per CPU core"), so the choice reads as a value or the documented default.
"""
from __future__ import annotations

import typing
import re
from typing import Any

from pydantic import BaseModel


# What None means, as descriptions say it: "None: one per CPU core.", "None uses AWS.", "Empty: a full
# build ...", "None starts a local cluster ...", "or None to skip copy detection."
_NONE_MEANS = re.compile(r"\b(?:None|Empty)(:| uses| =| means| to| starts)\s+(.+?)(?:[.;]\s|[.;]?$)")
LABEL_CHARS = 44


def null_choice_label(description: str | None, default_is_none: bool = True) -> str:
    """The tab label of a field's null branch: "Default: <what None means>" (or "None: ..." where None
    is not the default), from the field's description."""
    head = "Default" if default_is_none else "None"
    found = _NONE_MEANS.search(description or "")
    if not found:
        return head
    verb, meaning = found.group(1), found.group(2).strip()
    if verb == " starts":
        meaning = f"starts {meaning}"
    if len(meaning) > LABEL_CHARS:
        meaning = re.sub(r"\s*\(.*$", "", meaning)  # the parenthesis is in the description below
    if len(meaning) > LABEL_CHARS:
        meaning = meaning[:LABEL_CHARS].rsplit(" ", 1)[0] + "..."
    return f"{head}: {meaning}"


def label_null_choices(properties: dict[str, Any]) -> None:
    for prop in properties.values():
        for branch in prop.get("anyOf") or []:
            if branch.get("type") == "null" and "title" not in branch:
                branch["title"] = null_choice_label(prop.get("description"), prop.get("default") is None)


def write_positions(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """`json_schema_extra` hook: each property gets `position` = its field's place in ``cls``, and each
    null branch a title (`label_null_choices`)."""
    properties = schema.get("properties") or {}
    for position, (name, field) in enumerate(cls.model_fields.items()):
        for key in (field.alias, name):  # Prefect renders schemas by alias
            if key and key in properties:
                properties[key]["position"] = position
                break
    label_null_choices(properties)


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

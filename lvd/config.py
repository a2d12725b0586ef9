"""Load typed configuration: YAML presets plus dotted command-line overrides.

Everything ends in a pydantic model, so the same validation guards the CLI, the
Prefect UI form and `prefect deployment run --param`. Errors name the offending
key and what it accepts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from lvd.errors import LvdError

M = TypeVar("M", bound=BaseModel)

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(LvdError, ValueError):
    """A configuration that cannot be used; the message says which key and why."""


def preset_path(name_or_path: str | Path) -> Path:
    """Resolve `cpu-tiny` to configs/cpu-tiny.yaml; a path is returned as is."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        return path
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"unknown preset {name_or_path!r}; known presets: {', '.join(known)}")


def _parse_value(text: str) -> Any:
    """Interpret an override value as YAML, so `64`, `true`, `[a, b]` and `null` work."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _fields_of(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """Return the nested model class at `path`, or None if it is not a model."""
    current: Any = model
    for part in path:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = field.annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _override_problem(model: type[BaseModel], key: str) -> str | None:
    """Why ``key`` cannot be set on ``model`` (None: it can)."""
    parts = key.split(".")
    for depth in range(len(parts)):
        parent = _fields_of(model, parts[:depth])
        if parent is None:
            return f"{'.'.join(parts[:depth])!r} is not a section, so {key!r} cannot be set"
        if parts[depth] not in parent.model_fields:
            allowed = ", ".join(sorted(parent.model_fields))
            where = ".".join(parts[:depth]) or "top level"
            return f"unknown key {key!r}: {where} has {allowed}"
    return None


def apply_overrides(model: type[BaseModel], data: dict, overrides: list[str],
                    problems: list[str] | None = None) -> dict:
    """Set `a.b.c=value` overrides into `data`, refusing keys the model does not have.

    Every bad override is reported, not only the first: into ``problems`` when given (the good
    ones are still applied), else as one ConfigError naming them all.
    """
    data = dict(data)
    found: list[str] = []
    for item in overrides:
        if "=" not in item:
            found.append(f"override {item!r} must look like key.path=value")
            continue
        key, _, raw = item.partition("=")
        key = key.strip()
        problem = _override_problem(model, key)
        if problem is not None:
            found.append(problem)
            continue
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = _parse_value(raw)
    if problems is not None:
        problems.extend(found)
    elif found:
        raise ConfigError(_problems_message(found))
    return data


def _problems_message(lines: list[str]) -> str:
    if len(lines) == 1:
        return lines[0]
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _validation_lines(err: ValidationError) -> list[str]:
    lines = []
    for problem in err.errors():
        loc = ".".join(str(p) for p in problem["loc"])
        msg = problem["msg"]
        if problem["type"] == "extra_forbidden":
            msg = "unknown key"
        got = problem.get("input")
        shown = f" (got {got!r})" if problem["type"] != "extra_forbidden" and not isinstance(got, dict) else ""
        lines.append(f"{loc}: {msg}{shown}")
    return lines


def format_validation_error(err: ValidationError, problems: list[str] | None = None) -> str:
    """One line per problem, every one of them: `crawl.max_concurrency: Input should be >= 1 (got 0)`.

    ``problems`` (refused overrides) come first."""
    return "invalid configuration:\n  " + "\n  ".join(list(problems or []) + _validation_lines(err))


def validate(model: type[M], data: dict, problems: list[str] | None = None) -> M:
    """Build `model` from plain data, turning pydantic errors into a ConfigError that lists every invalid
    field (and the refused overrides in ``problems``)."""
    try:
        cfg = model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, problems)) from None
    if problems:
        raise ConfigError(_problems_message(problems))
    return cfg


def load_config(model: type[M], config: str | Path | None = None, overrides: list[str] | None = None,
                section: str | None = None) -> M:
    """Load a preset name or YAML file (or the model defaults) and apply overrides: the one config
    loader of every entry point. With ``section`` (e.g. ``train``) the model is that section of the
    file (or the whole file when it has no such key), and overrides may name it as a prefix."""
    data: dict = {}
    if config is not None:
        loaded = yaml.safe_load(preset_path(config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config}: the top level of a config file must be a mapping")
        data = loaded
    if section is not None:
        data = data.get(section, data)
        if not isinstance(data, dict):
            raise ConfigError(f"{config}: {section!r} must be a mapping")
        overrides = [o.removeprefix(f"{section}.") for o in overrides or []]
    problems: list[str] = []
    data = apply_overrides(model, data, overrides or [], problems)
    return validate(model, data, problems)


def override_model(cfg: M, overrides: list[str] | None) -> M:
    """`cfg` with dotted `key=value` overrides (the CLI's parser) applied; the fields `cfg` left unset stay
    unset, so settings taken from the environment keep working."""
    if not overrides:
        return cfg
    problems: list[str] = []
    data = apply_overrides(type(cfg), cfg.model_dump(mode="json", exclude_unset=True), overrides, problems)
    return validate(type(cfg), data, problems)


def merge_onto(model: type[BaseModel], base: dict, change: dict) -> dict:
    """``change`` laid over ``base``, section by section: a nested model (``crawl``, ``dedup.copy``)
    named in ``change`` keeps the fields of ``base`` it does not name; any other value (a number, a
    list, a mapping field) replaces the one in ``base`` whole, as a dotted override does."""
    merged = dict(base)
    for key, value in change.items():
        section = _fields_of(model, [key])
        if section is not None and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_onto(section, merged[key], value)
        else:
            merged[key] = value
    return merged

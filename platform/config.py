"""Typed configuration: strict pydantic models, YAML files and dotted overrides.

Precedence is defaults < YAML file < dotted CLI overrides (``split.test_days=1``).
Override values are parsed with ``yaml.safe_load`` so ``lr=3e-3`` is a float and
``layers=[100,100]`` a list.  Every config is frozen and rejects unknown keys; an
unknown key is reported with its full dotted path and the keys allowed there.
Tune search spaces and PBT mutations use the same dotted keys through
:func:`apply_overrides`.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "ConfigError",
    "StrictModel",
    "apply_overrides",
    "parse_override",
    "load_config",
    "validate_config",
    "config_to_yaml",
    "allowed_keys",
]

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration problem, with the dotted key path in the message."""


class StrictModel(BaseModel):
    """Base of every rayrec config: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), use_attribute_docstrings=True)


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``"a.b.c=value"`` into the key path and the YAML-parsed value."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {exc}") from exc
    if isinstance(value, str):
        value = _number_or_str(value)
    return key, value


def _number_or_str(text: str) -> Any:
    """PyYAML follows YAML 1.1, where ``3e-3`` is a string; read it as a number."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        return text
    return f if text.strip().lower() not in ("nan", "inf", "-inf", "infinity") else text


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict:
    """Return a deep copy of ``data`` with dotted overrides applied.

    ``overrides`` is either a list of ``"key.path=value"`` strings (CLI) or a mapping
    ``{"key.path": value}`` (Tune samples).  Intermediate dicts are created when
    missing; validation afterwards rejects paths the config does not have.
    """
    out = json.loads(json.dumps(dict(data), default=_json_default))
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in items:
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(
                    f"override {key}: {'.'.join(parts[: i + 1])} is a value "
                    f"({nxt!r}), not a section"
                )
            node = nxt
        node[parts[-1]] = value
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (_dt.date, _dt.datetime)):
        return obj.isoformat()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def allowed_keys(cls: type[BaseModel], path: tuple[Any, ...]) -> list[str] | None:
    """The field names allowed at ``path`` inside ``cls`` (None when unknown)."""
    current: Any = cls
    for part in path:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None:
            # discriminated-union tags appear in the loc as the member's tag
            return None
        if part in fields:
            current = _model_of(fields[part].annotation)
        else:
            current = _member_by_tag(current, part)
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields is not None else None


def _model_of(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found if not isinstance(found, list) else found
    return _union_members(annotation) or None


def _union_members(annotation: Any) -> list[type[BaseModel]]:
    import typing

    members = []
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            members.append(arg)
        else:
            members.extend(_union_members(arg))
    return members


def _member_by_tag(current: Any, tag: str) -> Any:
    if isinstance(current, list):
        for member in current:
            name_field = member.model_fields.get("name")
            if name_field is not None and name_field.default == tag:
                return member
    return None


def _format_error(cls: type[BaseModel], err: ValidationError, source: str) -> str:
    lines = [f"invalid {cls.__name__} ({source}):"]
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            allowed = allowed_keys(cls, loc[:-1])
            hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
            lines.append(f"  {path}: unknown key{hint}")
        else:
            lines.append(f"  {path}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate_config(cls: type[T], data: Mapping[str, Any], source: str = "config") -> T:
    """Validate ``data`` as ``cls``; errors name every bad key path."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(_format_error(cls, err, source)) from None


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> T:
    """Load ``cls`` from an optional YAML file plus dotted overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
        source = str(path)
    data = apply_overrides(data, overrides)
    return validate_config(cls, data, source=source)


def config_to_yaml(cfg: BaseModel) -> str:
    """The resolved config as YAML (what jobs print at start and write out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

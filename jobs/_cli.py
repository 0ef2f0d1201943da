"""Shared command-line handling: ``--config FILE`` plus dotted ``key=value`` overrides.

Only ``rayrec.jobs`` parses argv (the layer contract in ``pyproject.toml``). ``--help`` prints
the job's whole description and its top-level config keys; every key, nested ones included,
is in ``docs/config_reference.md`` (generated from the same config models by
``scripts/gen_reference.py``, checked current by the unit tests).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from rayrec.platform.config import ConfigError, config_to_yaml, load_config

T = TypeVar("T", bound=BaseModel)


def _type_name(ann: Any) -> str:
    if ann is type(None):
        return "None"
    if isinstance(ann, type):
        return ann.__name__
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(ann)[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(ann))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(ann))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(ann))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return str(ann).replace("typing.", "")


def _submodel(ann: Any) -> type[BaseModel] | None:
    """The config section a field holds (``X`` or ``X | None``), else None."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        subs = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(subs) == 1:
            return subs[0]
    return None


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        try:
            val = field.default_factory()
        except TypeError:  # a factory that takes the validated data
            return "(computed)"
        if isinstance(val, BaseModel):
            return "(section)"
    else:
        val = field.default
    if isinstance(val, BaseModel):
        return "(section)"
    if hasattr(val, "isoformat"):
        return val.isoformat()
    return repr(val.value if hasattr(val, "value") and not isinstance(val, (str, int, float)) else val)


def config_keys(cls: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """``(dotted key, type, default, description)`` of every key of a config model, sections
    recursed into (the description is the field's attribute docstring)."""
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        sub = _submodel(field.annotation)
        desc = field.description or ""
        if not desc and sub is not None and sub.__doc__:  # a section: its class docstring's lead
            desc = sub.__doc__.strip().split("\n\n")[0]
        desc = " ".join(desc.split())
        yield key, (sub.__name__ if sub else _type_name(field.annotation)), _default(field), desc
        if sub is not None:
            yield from config_keys(sub, f"{key}.")


def parser(prog: str, doc: str, cfg_cls: type[BaseModel] | None = None) -> argparse.ArgumentParser:
    """The job's parser: ``doc`` (the job module's docstring) is printed whole by ``--help``,
    followed by ``cfg_cls``'s top-level keys."""
    lines = doc.strip("\n").splitlines()
    usage = lines[0].strip().strip("`") if lines else ""
    description = textwrap.dedent("\n".join(lines[1:])).strip()
    epilog = None
    if cfg_cls is not None:
        rows = [(k, d) for k, _t, _df, d in config_keys(cfg_cls) if "." not in k]
        width = max(len(k) for k, _ in rows)
        body = "\n".join(
            textwrap.fill(d or "-", 96, initial_indent=f"  {k:<{width}}  ",
                          subsequent_indent=" " * (width + 4)) for k, d in rows)
        epilog = (f"top-level config keys ({cfg_cls.__name__}; every nested key, its type and "
                  f"default: docs/config_reference.md):\n{body}")
    p = argparse.ArgumentParser(prog=f"python -m rayrec.jobs.{prog}", usage=usage or None,
                                description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="YAML config file (defaults < file < overrides)")
    p.add_argument(
        "overrides", nargs="*", metavar="key.path=value",
        help="dotted overrides, values parsed as YAML (e.g. split.test_days=1)",
    )
    return p


def load(cls: type[T], args: argparse.Namespace, prog: str) -> T:
    """Load and print the resolved config; a bad config exits 2 with the key named."""
    try:
        cfg = load_config(cls, args.config, args.overrides)
    except ConfigError as exc:
        print(f"rayrec.jobs.{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"# rayrec.jobs.{prog}: resolved config\n{config_to_yaml(cfg)}", flush=True)
    return cfg


def argv_or_sys(argv: Sequence[str] | None) -> list[str]:
    return list(sys.argv[1:] if argv is None else argv)

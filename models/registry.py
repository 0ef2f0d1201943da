"""The model registry: name -> (config class, builder, kind).

Job configs take ``model:`` as a union of the registered config classes,
discriminated by their ``name`` field, so a YAML's ``model.name`` picks the model
and its typed hyper-parameters.  Model modules register themselves with
:func:`register`; :func:`load_all` imports every built-in model module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

ModelKind = Literal["session", "daily", "baseline"]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config_cls: type
    build: Callable[..., Any]
    kind: ModelKind


MODELS: dict[str, ModelEntry] = {}

BUILTIN_MODULES = ("rayrec.models.baselines", "rayrec.models.gru4rec", "rayrec.models.daily_nn")


def register(name: str, config_cls: type, build: Callable[..., Any], kind: ModelKind) -> None:
    if name in MODELS and MODELS[name].config_cls is not config_cls:
        raise ValueError(f"model {name!r} registered twice")
    MODELS[name] = ModelEntry(name, config_cls, build, kind)


def load_all() -> dict[str, ModelEntry]:
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a module not written yet
            if exc.name != mod:
                raise
    return MODELS


def get(name: str) -> ModelEntry:
    load_all()
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[name]

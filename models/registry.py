"""The model registry: the only place that knows which models exist.

Every model registers one :class:`ModelSpec`: its config class (a pydantic model with a
``name`` literal), its builder, its kind, its training task, the scorer evaluation and
serving use, its metric family and its default YAML.  Job configs take ``model:`` as the
union of the registered config classes, discriminated by ``name``
(:func:`model_config_union`); nothing outside this module branches on a model's name.

Built-in models live in :data:`BUILTIN_MODULES`; a plug-in model registers itself when its
module is imported (``RAYREC_MODEL_MODULES=pkg.mod,...`` makes the jobs import it).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from torch import nn

ModelKind = Literal["session", "daily", "baseline", "embedding", "history"]
MetricFamily = Literal["next_item", "future_window", "sampled_candidates"]

#: the metric family of each trainable kind (protocols in rayrec.platform.evaluation)
KIND_METRICS: dict[str, MetricFamily] = {"session": "next_item", "daily": "future_window",
                                         "history": "sampled_candidates"}


@dataclass(frozen=True)
class ModelSpec:
    """What the platform knows of a model.

    ``build(config, n_items) -> nn.Module``: a fresh single-device model (checkpoints hold its
    ``state_dict``).  ``task(job) -> TrainTask`` (see :mod:`rayrec.models.contract`): None for
    models fitted outside the loop (baselines).  ``scorer(model) -> SessionScorer`` for session
    models (evaluation and serving).  ``default_config``: the shipped training YAML's file
    name in ``rayrec/jobs/configs``.
    """

    name: str
    config_cls: type
    build: Callable[..., Any]
    kind: ModelKind
    task: Callable[[Any], Any] | None = None
    scorer: Callable[[nn.Module], Any] | None = None
    default_config: str | None = None
    parallelism: Literal["data", "tensor"] = "data"
    """How the task spreads over Ray Train workers (:data:`rayrec.models.contract.Parallelism`)."""
    job_defaults: dict[str, Any] = field(default_factory=dict)
    """Training-job values this model needs other than the platform's defaults (nested, e.g.
    ``{"optim": {"name": "adam", "lr": 1e-3}}``): defaults < these < YAML < overrides."""
    refused_engines: dict[str, str] = field(default_factory=dict)
    """``scaling.engine`` values this model refuses -> why (the config error says it)."""

    @property
    def metrics(self) -> MetricFamily | None:
        return KIND_METRICS.get(self.kind)

    @property
    def trainable(self) -> bool:
        return self.task is not None


MODELS: dict[str, ModelSpec] = {}
PLUGIN_MODULES: dict[str, None] = {}

BUILTIN_MODULES = ("rayrec.models.baselines", "rayrec.models.gru4rec", "rayrec.models.hrnn",
                   "rayrec.models.daily_nn", "rayrec.models.item2vec", "rayrec.models.attention_cf",
                   "rayrec.models.drnn")


def register(spec: ModelSpec) -> ModelSpec:
    """Register ``spec``; another config class under a taken name is an error."""
    old = MODELS.get(spec.name)
    if old is not None and old.config_cls is not spec.config_cls:
        raise ValueError(f"model {spec.name!r} registered twice")
    MODELS[spec.name] = spec
    module = getattr(spec.config_cls, "__module__", "")
    if module and module not in BUILTIN_MODULES and module != "__main__":
        PLUGIN_MODULES.setdefault(module, None)
    return spec


def plugin_modules() -> list[str]:
    """Modules outside :data:`BUILTIN_MODULES` that registered a model in this process: the
    training driver and Tune hand them to their workers (other processes), which import them
    before validating a config (:func:`import_modules`)."""
    return list(PLUGIN_MODULES)


def import_modules(modules: list[str] | tuple[str, ...]) -> None:
    for mod in modules:
        if mod.strip():
            importlib.import_module(mod.strip())


def load_all() -> dict[str, ModelSpec]:
    extra = tuple(m for m in os.environ.get("RAYREC_MODEL_MODULES", "").split(",") if m.strip())
    import_modules(BUILTIN_MODULES + extra)
    return MODELS


def get(name: str) -> ModelSpec:
    load_all()
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def trainable_specs() -> list[ModelSpec]:
    return [s for _, s in sorted(load_all().items()) if s.trainable]


def model_config_union() -> Any:
    """``Annotated[Union[...], Field(discriminator="name")]`` over the trainable models."""
    from pydantic import Field

    classes = tuple(s.config_cls for s in trainable_specs())
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[classes], Field(discriminator="name")]

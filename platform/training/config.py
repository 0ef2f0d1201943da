"""``TrainJobConfig``: the typed config of ``rayrec.jobs.train``, of Tune trials and of the
daily job's training step, for every registered model.

``model:`` is the union of the registered models' configs, discriminated by ``model.name``
(:func:`rayrec.models.registry.get`); the registry is the only place that knows models.
A model's spec may set job defaults (``ModelSpec.job_defaults``): platform defaults < the
spec's < YAML < dotted overrides.  Keys of the vocabulary before the model contract give an
error naming their new key (:data:`MOVED_KEYS`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from rayrec.models import registry
from rayrec.platform.config import StrictModel, allowed_keys
from rayrec.platform.sections import (
    DataSection,
    EvalSection,
    RaySection,
    RunSection,
    ScalingSection,
    TrainSection,
)
from rayrec.platform.training.optim import OptimConfig

__all__ = ["MOVED_KEYS", "TrainJobConfig", "resolve_model_config"]

#: old dotted key -> its new key (or a sentence saying what replaces it)
MOVED_KEYS: dict[str, str] = {
    "loss": "model.loss",
    "train.cutoffs": "eval.ks",
    "train.ks": "eval.ks",
    "train.eval_every": "eval.every",
    "train.eval_batch_size": "eval.batch_size",
    "train.shuffle_sessions": "train.shuffle",
    "data.train_prefix": "data.train_split",
    "data.valid_prefix": "data.valid_split",
    "data.test_prefix": "data.test_split",
    "optim.decay_lr_multiplier": "optim.lr_multipliers.decay",
}


def _moved(data: dict[str, Any]) -> None:
    for old, new in MOVED_KEYS.items():
        head, _, tail = old.partition(".")
        node = data.get(head)
        if (not tail and head in data) or (tail and isinstance(node, dict) and tail in node):
            raise ValueError(f"{old} was renamed: use {new}")
    sc = data.get("scaling")
    if isinstance(sc, dict) and sc.get("num_workers") == 0:
        raise ValueError("scaling.num_workers=0 was renamed: use ray.use_ray=false to train in this process")
    if isinstance(sc, dict) and sc.get("engine") == "torch":
        raise ValueError("scaling.engine=torch was renamed: use scaling.engine=tensor_parallel")


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_model_config(value: Any) -> BaseModel:
    """``model:`` (a mapping with ``name``) -> the registered model's typed config."""
    if isinstance(value, BaseModel):
        spec = registry.get(getattr(value, "name", ""))
        if not isinstance(value, spec.config_cls):
            raise ValueError(f"model: a {type(value).__name__} is not {spec.name}'s config")
        return value
    names = ", ".join(s.name for s in registry.trainable_specs())
    if not isinstance(value, dict) or "name" not in value:
        raise ValueError(f"model.name is required: one of {names}")
    try:
        spec = registry.get(str(value["name"]))
    except KeyError:
        raise ValueError(f"model.name: unknown model {value['name']!r}; trainable models: {names}") from None
    if not spec.trainable:
        raise ValueError(f"model.name: {spec.name!r} is a {spec.kind} (not trained by this job); "
                         f"trainable models: {names}")
    try:
        return spec.config_cls.model_validate(value)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            path = ".".join(str(p) for p in ("model", *e["loc"]))
            if e["type"] == "extra_forbidden":
                allowed = allowed_keys(spec.config_cls, tuple(e["loc"][:-1]))
                lines.append(f"{path}: unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else ""))
            else:
                lines.append(f"{path}: {e['msg']} (got {str(e.get('input'))[:80]!r})")
        raise ValueError("; ".join(lines)) from None


class TrainJobConfig(StrictModel):
    model: Any = Field(None, validate_default=True)
    """The registered model's config (``model.name`` picks it: gru4rec, daily_nn, ...)."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    run: RunSection = Field(default_factory=RunSection)
    ray: RaySection = Field(default_factory=RaySection)

    @model_validator(mode="before")
    @classmethod
    def _defaults_and_renames(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        _moved(data)
        model = data.get("model")
        if isinstance(model, dict) and "name" in model:
            try:
                spec = registry.get(str(model["name"]))
            except KeyError:
                return data  # reported by the model field
            defaults = _deep_merge({"run": {"name": spec.name}}, spec.job_defaults)
            data = _deep_merge(defaults, data)
        return data

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> Any:
        return resolve_model_config(v)

    @model_validator(mode="after")
    def _engine(self) -> TrainJobConfig:
        spec = registry.get(self.model.name)
        sc = self.scaling
        if sc.engine in spec.refused_engines:
            raise ValueError(f"scaling.engine={sc.engine}: {spec.refused_engines[sc.engine]}")
        if spec.parallelism == "data" and sc.engine == "tensor_parallel":
            raise ValueError(f"scaling.engine=tensor_parallel: {spec.name} is data parallel "
                             "(use ddp or deepspeed)")
        if spec.parallelism == "tensor" and self.ray.use_ray and sc.num_workers > 1:
            if sc.engine == "ddp":
                raise ValueError(f"scaling.engine=ddp: {spec.name} splits its catalog-wide tables across "
                                 "workers; use tensor_parallel or deepspeed")
            if sc.zero_stage > 1:
                raise ValueError("scaling.zero_stage: the model is tensor-parallel over all workers, so "
                                 "the data-parallel group has size 1; stages 2/3 would shard nothing")
        if not self.ray.use_ray and sc.engine == "deepspeed":
            raise ValueError("scaling.engine=deepspeed needs ray.use_ray=true (DeepSpeed runs on Ray Train)")
        tr = self.train
        if tr.sequence_key != "session" and spec.kind != "session":
            raise ValueError(f"train.sequence_key={tr.sequence_key}: only session models train on "
                             f"sequences ({spec.name} is a {spec.kind} model)")
        if tr.bptt > 1 and not getattr(spec.task, "supports_bptt", False):
            raise ValueError(f"train.bptt={tr.bptt}: {spec.name} trains one step at a time (use 1)")
        check = getattr(self.model, "check_train", None)  # a model's checks across sections
        if check is not None:
            check(tr)
        return self

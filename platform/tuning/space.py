"""Search spaces keyed by the same dotted paths as CLI overrides (``optim.lr``).

A space is ``{dotted_key: Gene}``; a sampled point is ``{dotted_key: value}`` and
:func:`make_train_config` is the ONE place that turns it into a validated
``TrainJobConfig`` (through :func:`rayrec.platform.config.apply_overrides`).
Genes are typed so the genetic searcher's operators keep every value inside its
domain and type: ``float``, ``logfloat``, ``int``, ``choice``, ``layers``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import Field, model_validator

from rayrec.platform.config import ConfigError, StrictModel, apply_overrides, validate_config


class FloatGene(StrictModel):
    type: Literal["float"] = "float"
    low: float
    high: float

    @model_validator(mode="after")
    def _range(self) -> FloatGene:
        if not self.low < self.high:
            raise ValueError(f"empty domain: low={self.low} must be < high={self.high}")
        return self

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def mutate(self, v: float, rng: np.random.Generator) -> float:
        width = self.high - self.low
        return float(np.clip(v + rng.normal(0.0, 0.2 * width), self.low, self.high))

    def contains(self, v: Any) -> bool:
        return isinstance(v, float) and self.low <= v <= self.high


class LogFloatGene(FloatGene):
    type: Literal["logfloat"] = "logfloat"  # type: ignore[assignment]

    @model_validator(mode="after")
    def _positive(self) -> LogFloatGene:
        if self.low <= 0:
            raise ValueError(f"logfloat needs low > 0, got {self.low}")
        return self

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def mutate(self, v: float, rng: np.random.Generator) -> float:
        lo, hi = math.log(self.low), math.log(self.high)
        return float(min(max(math.exp(math.log(v) + rng.normal(0.0, 0.2 * (hi - lo))), self.low), self.high))


class IntGene(StrictModel):
    type: Literal["int"] = "int"
    low: int
    high: int
    """inclusive"""

    @model_validator(mode="after")
    def _range(self) -> IntGene:
        if not self.low <= self.high:
            raise ValueError(f"empty domain: low={self.low} must be <= high={self.high}")
        return self

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))

    def mutate(self, v: int, rng: np.random.Generator) -> int:
        step = max(1, round(0.2 * (self.high - self.low)))
        return int(np.clip(v + int(rng.integers(-step, step + 1)), self.low, self.high))

    def contains(self, v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and self.low <= v <= self.high


class ChoiceGene(StrictModel):
    type: Literal["choice"] = "choice"
    values: list[Any]

    @model_validator(mode="after")
    def _nonempty(self) -> ChoiceGene:
        if not self.values:
            raise ValueError("empty domain: choice needs at least one value")
        return self

    def sample(self, rng: np.random.Generator) -> Any:
        return self.values[int(rng.integers(len(self.values)))]

    def mutate(self, v: Any, rng: np.random.Generator) -> Any:
        others = [x for x in self.values if x != v]
        return others[int(rng.integers(len(others)))] if others else v

    def contains(self, v: Any) -> bool:
        return v in self.values


class LayersGene(StrictModel):
    """A list of layer sizes: ``min_layers..max_layers`` layers, each size from ``sizes``."""

    type: Literal["layers"] = "layers"
    min_layers: int = Field(1, ge=1)
    max_layers: int = Field(3, ge=1)
    sizes: list[int]

    @model_validator(mode="after")
    def _check(self) -> LayersGene:
        if not self.sizes:
            raise ValueError("empty domain: layers needs at least one size")
        if self.min_layers > self.max_layers:
            raise ValueError(f"empty domain: min_layers={self.min_layers} > max_layers={self.max_layers}")
        return self

    def sample(self, rng: np.random.Generator) -> list[int]:
        n = int(rng.integers(self.min_layers, self.max_layers + 1))
        return [int(self.sizes[int(rng.integers(len(self.sizes)))]) for _ in range(n)]

    def mutate(self, v: list[int], rng: np.random.Generator) -> list[int]:
        v = list(v)
        op = int(rng.integers(3))
        if op == 0 and len(v) < self.max_layers:
            v.insert(int(rng.integers(len(v) + 1)), int(self.sizes[int(rng.integers(len(self.sizes)))]))
        elif op == 1 and len(v) > self.min_layers:
            v.pop(int(rng.integers(len(v))))
        else:
            v[int(rng.integers(len(v)))] = int(self.sizes[int(rng.integers(len(self.sizes)))])
        return v

    def contains(self, v: Any) -> bool:
        return (
            isinstance(v, list) and self.min_layers <= len(v) <= self.max_layers
            and all(isinstance(x, int) and x in self.sizes for x in v)
        )


Gene = Annotated[
    Union[FloatGene, LogFloatGene, IntGene, ChoiceGene, LayersGene], Field(discriminator="type")
]


def check_space_keys(base: dict[str, Any], space: dict[str, Any], cls: type) -> None:
    """Reject a space naming a key the config does not have, before any trial starts."""
    for key, gene in space.items():
        value = gene.sample(np.random.default_rng(0))
        try:
            validate_config(cls, apply_overrides(base, {key: value}), source=f"search space key {key!r}")
        except ConfigError as exc:
            raise ConfigError(f"search space key {key!r} is not valid for {cls.__name__}: {exc}") from None


def make_train_config(base: dict[str, Any], point: dict[str, Any], cls: type | None = None):
    """The one place a sampled point becomes a validated training config."""
    if cls is None:
        from rayrec.platform.training.config import TrainJobConfig as cls
    return validate_config(cls, apply_overrides(base, point), source="tune sample")

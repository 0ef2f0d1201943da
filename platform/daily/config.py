"""Typed job configs of the daily recommender (seed 000): batch predict and the daily job.

Training the daily model is ``rayrec.jobs.train`` with ``model.name: daily_nn``
(:class:`rayrec.platform.training.config.TrainJobConfig`, the one config of every model); the
daily job's ``train:`` section is that config.

* :class:`BatchPredictJobConfig` - ``rayrec.jobs.batch_predict``.
* :class:`DailyJobConfig` - ``rayrec.jobs.daily --as-of YYYY-MM-DD``.

Dates in YAML should be quoted (``"1998-03-15"``); ISO strings are parsed by pydantic.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rayrec.platform.config import StrictModel
from rayrec.platform.preprocessing.config import FilterConfig, SourceConfig, Sources, ValidateConfig
from rayrec.platform.sections import RaySection
from rayrec.platform.training.config import TrainJobConfig

__all__ = [
    "BatchPredictJobConfig",
    "DailyJobConfig",
    "MetadataConfig",
    "PredictConfig",
    "PublishConfig",
    "SanityConfig",
    "StoreConfig",
    "WindowConfig",
]


def _daily_train(value: Any) -> Any:
    """The daily job's ``train:``: a training config whose model defaults to ``daily_nn``."""
    if isinstance(value, dict) and "model" not in value:
        return {**value, "model": {"name": "daily_nn"}}
    if isinstance(value, dict) and isinstance(value["model"], dict) and "name" not in value["model"]:
        return {**value, "model": {**value["model"], "name": "daily_nn"}}
    return value


class PredictConfig(StrictModel):
    k: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    concurrency: int = Field(2, ge=1)
    """Ray Data actors, each loading the model once."""
    num_cpus_per_actor: float = Field(0.5, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "use_ray" in data:
            raise ValueError("predict.use_ray was renamed: use ray.use_ray (false scores in this process)")
        return data


class StoreConfig(StrictModel):
    path: str = "outputs/daily/recs.sqlite"
    keep_versions: int = Field(7, ge=1)


class BatchPredictJobConfig(StrictModel):
    checkpoint: str
    """A daily-model checkpoint directory (``rayrec.jobs.train`` with ``model.name: daily_nn``)."""
    data_path: str
    """A ``date_windows`` preprocess output; users come from ``predict_split``."""
    predict_split: str = "predict_x.parquet"
    as_of: date
    """YYYY-MM-DD: the end of the input window (days_ago is measured from it)."""
    model_version: str | None = None
    """Defaults to the checkpoint's item-index hash + epoch."""
    predict: PredictConfig = Field(default_factory=PredictConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    ray: RaySection = Field(default_factory=RaySection)


class WindowConfig(StrictModel):
    """Windows relative to the as-of date (section 5): dyz = as-of, dxy = as-of - output_days,
    dx = as-of - input_days, dz = as-of + test_days clipped to the day after the last event."""

    input_days: int = Field(730, ge=1)
    output_days: int = Field(7, ge=1)
    test_days: int = Field(7, ge=1)
    valid_shift_days: int = Field(30, ge=1)

    @model_validator(mode="after")
    def _order(self) -> WindowConfig:
        if self.input_days <= self.output_days:
            raise ValueError(
                f"window.input_days ({self.input_days}) must exceed window.output_days "
                f"({self.output_days}): dx = as-of - input_days must come before dxy = as-of - output_days"
            )
        return self


class SanityConfig(StrictModel):
    """Checks of the as-of windows before training (degenerate data is never silent)."""

    min_train_users: int = Field(20, ge=1)
    """Users with an output purchase in the training window (X = [dx, dxy) -> Y = [dxy, dyz))."""
    min_eval_users: int = Field(20, ge=1)
    """Users with a purchase in the future window (XY = [dx, dyz) -> Z = [dyz, dz)); not
    checked when the future window is empty (as-of at the end of the data)."""
    on_small: Literal["error", "warn"] = "error"
    """``error``: stop before training (nothing is published); ``warn``: a WARNING line with
    the counts, recorded in ``evaluation.json``, and the run goes on."""


class PublishConfig(StrictModel):
    """Floors the evaluated model must reach to be published (``--force`` publishes anyway).
    Checked on the future window; skipped (and said so) when it is empty."""

    k: int | None = Field(None, ge=1)
    """The K of ``precision@K`` compared (default: the largest of ``train.eval.ks``)."""
    min_precision: float | None = Field(None, ge=0.0, le=1.0)
    """Refuse to publish below this ``precision@K``."""
    min_pop_ratio: float | None = Field(None, ge=0.0)
    """Refuse to publish below this fraction of POP's ``precision@K`` (1.0: at least POP)."""


class MetadataConfig(StrictModel):
    """How ``source.item_metadata`` is read and where the daily job writes it for serving."""

    category_sep: str = Field("|", min_length=1)
    """Separator of multi-valued categories (``Action|Comedy``)."""
    output_path: str | None = None
    """The item metadata file for the recommender's ``catalog.item_metadata`` (columns
    item_id, category, title); default ``item_metadata.parquet`` next to ``store.path``."""


class DailyJobConfig(StrictModel):
    source: Sources
    """One event file, or a list (the history plus the Serve event logs, ``events.log_dir``):
    their purchases are merged and an event found in several sources (same user, item and
    time) is kept once (counted in the preprocess manifest's ``counts.dedupe``).
    ``item_metadata`` is read from the first source that names it."""
    validation: ValidateConfig = Field(default_factory=ValidateConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    window: WindowConfig = Field(default_factory=WindowConfig)
    work_dir: str = "outputs/daily"
    """Per-date data and runs go to ``<work_dir>/<as-of>/``."""
    train: TrainJobConfig = Field(default_factory=lambda: TrainJobConfig.model_validate({"model": {"name": "daily_nn"}}))
    """The training config (``rayrec.jobs.train``'s) of the daily model; ``model.name``
    defaults to ``daily_nn``; ``data.path`` and ``run`` are set per date."""
    predict: PredictConfig = Field(default_factory=PredictConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    ray: RaySection = Field(default_factory=lambda: RaySection(use_ray="auto"))
    """Batch prediction: Ray Data actors (``use_ray: true``), this process (``false``) or by
    the number of users to score (``auto``, the default: ``ray.auto_max_rows``); the training
    step has its own ``train.ray``."""
    sanity: SanityConfig = Field(default_factory=SanityConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    metadata: MetadataConfig = Field(default_factory=MetadataConfig)
    plot: bool = True
    fail_at: Literal["preprocess", "train", "evaluate", "predict"] | None = None
    """Testing aid: raise at the start of this step (a failed step publishes nothing)."""

    @field_validator("train", mode="before")
    @classmethod
    def _train(cls, v: Any) -> Any:
        return _daily_train(v)

    @property
    def sources(self) -> list[SourceConfig]:
        """``source`` as a list (one source or several)."""
        return list(self.source) if isinstance(self.source, (list, tuple)) else [self.source]

    @property
    def item_metadata_source(self) -> SourceConfig | None:
        """The first source naming ``item_metadata`` (None: no item metadata)."""
        return next((s for s in self.sources if s.item_metadata is not None), None)

    @model_validator(mode="after")
    def _metadata(self) -> DailyJobConfig:
        for i, src in enumerate(self.sources):
            key = "source" if not isinstance(self.source, (list, tuple)) else f"source[{i}]"
            if src.user_metadata is not None:
                raise ValueError(
                    f"{key}.user_metadata is not used by the daily job (the daily model has no "
                    "user features and serving has no user filters): remove it")
            if src.path is None:
                raise ValueError(f"{key}.path is required for the daily job (an event file; "
                                 "source.paths is the preprocess job's predefined splits)")
        k = self.publish.k
        if k is not None and k not in self.train.eval.ks:
            raise ValueError(f"publish.k={k} must be one of train.eval.ks {list(self.train.eval.ks)}")
        return self

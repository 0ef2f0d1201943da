"""Typed job configs of the daily recommender (seed 000): train, batch predict, daily job.

* :class:`DailyTrainJobConfig` - ``rayrec.platform.daily.trainer.fit_daily`` (and
  ``rayrec.jobs.train`` when ``model.name == "daily_nn"``).
* :class:`BatchPredictJobConfig` - ``rayrec.jobs.batch_predict``.
* :class:`DailyJobConfig` - ``rayrec.jobs.daily --as-of YYYY-MM-DD``.

Dates in YAML should be quoted (``"1998-03-15"``); ISO strings are parsed by pydantic.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field, model_validator
from rayrec.models.daily_nn import DailyNNConfig

from rayrec.platform.config import StrictModel
from rayrec.platform.preprocessing.config import FilterConfig, SourceConfig, ValidateConfig
from rayrec.platform.training.config import RayInitConfig

__all__ = [
    "BatchPredictJobConfig",
    "DailyDataConfig",
    "DailyJobConfig",
    "DailyLoopConfig",
    "DailyOptimConfig",
    "DailyRunConfig",
    "DailyScalingConfig",
    "DailyTrainJobConfig",
    "PredictConfig",
    "StoreConfig",
    "SyntheticDailyData",
    "WindowConfig",
]


class SyntheticDailyData(StrictModel):
    """In-memory random purchase data (benchmarks and the P = 1M tensor-parallel demo)."""

    n_users: int = Field(2048, ge=1)
    n_items: int = Field(100_000, ge=2)
    items_per_user: int = Field(8, ge=1)
    targets_per_user: int = Field(2, ge=1)
    seed: int = 0


class DailyDataConfig(StrictModel):
    path: str = "outputs/ml-100k"
    """A ``date_windows`` preprocess output (splits ``<prefix>_x`` / ``<prefix>_y``)."""
    train_prefix: str = "train"
    """Training pairs: ``train_x`` (X = [dx, dxy)) -> ``train_y`` (Y = [dxy, dyz))."""
    valid_prefix: str | None = "valid_test"
    """Validation after every epoch on the windows shifted back one month (section 3.1):
    ``valid_test_x`` ([dx, dyz) - 30 d) -> ``valid_test_y`` ([dyz, dz) - 30 d).  None: off."""
    test_prefix: str = "test"
    catalog_size: int | None = Field(None, ge=1)
    """P: keep the P most purchased products of the input windows (section 3.1); None keeps
    all.  Larger than the item count is an error (no silent padding)."""
    synthetic: SyntheticDailyData | None = None
    """When set, ``path`` is ignored and random data of this shape is generated."""

    @model_validator(mode="after")
    def _synthetic_catalog(self) -> DailyDataConfig:
        if self.synthetic is not None and self.catalog_size is not None:
            raise ValueError("data.catalog_size cannot be combined with data.synthetic (use synthetic.n_items)")
        return self


class DailyOptimConfig(StrictModel):
    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    decay_lr_multiplier: float = Field(1.0, gt=0)
    """Learning-rate multiplier of the 33 parameters of the learned decay (eq. 4): they are
    shared by every product and move slowly at the network's learning rate."""


class DailyLoopConfig(StrictModel):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0
    max_steps_per_epoch: int | None = Field(None, ge=1)
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    eval_batch_size: int = Field(256, ge=1)


class DailyScalingConfig(StrictModel):
    num_workers: int = Field(0, ge=0)
    """0: in-process (no Ray); >= 1: Ray Train workers, the output layer split by columns."""
    cpus_per_worker: float = Field(1.0, gt=0)
    engine: Literal["torch", "deepspeed"] = "torch"
    """torch: plain per-rank Adam on the tensor-parallel model; deepspeed: DeepSpeed engine
    (ZeRO stage ``zero_stage``) with a model-parallel group spanning the workers."""
    zero_stage: int = Field(0, ge=0, le=3)
    torch_threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> DailyScalingConfig:
        if self.zero_stage and self.engine != "deepspeed":
            raise ValueError("scaling.zero_stage needs scaling.engine=deepspeed")
        if self.zero_stage > 1:
            raise ValueError(
                "scaling.zero_stage: the output layer is tensor-parallel over all workers, so the "
                "data-parallel group has size 1; stages 2/3 would shard nothing and are refused"
            )
        return self


class DailyRunConfig(StrictModel):
    name: str = "daily_nn"
    storage_path: str = "runs"
    keep_checkpoints: int | None = Field(2, ge=1)
    checkpoint: bool = True


class DailyTrainJobConfig(StrictModel):
    model: DailyNNConfig = Field(default_factory=DailyNNConfig)
    optim: DailyOptimConfig = Field(default_factory=DailyOptimConfig)
    data: DailyDataConfig = Field(default_factory=DailyDataConfig)
    train: DailyLoopConfig = Field(default_factory=DailyLoopConfig)
    scaling: DailyScalingConfig = Field(default_factory=DailyScalingConfig)
    run: DailyRunConfig = Field(default_factory=DailyRunConfig)
    ray: RayInitConfig = Field(default_factory=RayInitConfig)


class PredictConfig(StrictModel):
    k: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    concurrency: int = Field(2, ge=1)
    """Ray Data actors, each loading the model once."""
    num_cpus_per_actor: float = Field(0.5, gt=0)
    use_ray: bool = True
    """False scores in this process (tests, tiny runs)."""


class StoreConfig(StrictModel):
    path: str = "outputs/daily/recs.sqlite"
    keep_versions: int = Field(7, ge=1)


class BatchPredictJobConfig(StrictModel):
    checkpoint: str
    """A ``fit_daily`` checkpoint directory."""
    data_path: str
    """A ``date_windows`` preprocess output; users come from ``predict_split``."""
    predict_split: str = "predict_x.parquet"
    as_of: date
    """YYYY-MM-DD: the end of the input window (days_ago is measured from it)."""
    model_version: str | None = None
    """Defaults to the checkpoint's item-index hash + epoch."""
    predict: PredictConfig = Field(default_factory=PredictConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    ray: RayInitConfig = Field(default_factory=RayInitConfig)


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


class DailyJobConfig(StrictModel):
    source: SourceConfig
    validation: ValidateConfig = Field(default_factory=ValidateConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    window: WindowConfig = Field(default_factory=WindowConfig)
    work_dir: str = "outputs/daily"
    """Per-date data and runs go to ``<work_dir>/<as-of>/``."""
    train: DailyTrainJobConfig = Field(default_factory=DailyTrainJobConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    plot: bool = True
    fail_at: Literal["preprocess", "train", "evaluate", "predict"] | None = None
    """Testing aid: raise at the start of this step (a failed step publishes nothing)."""

"""``PreprocessJobConfig``: the typed config of ``rayrec.jobs.preprocess``."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field, model_validator

from rayrec.platform.config import StrictModel

SourceFormat = Literal[
    "rsc15_prepared", "rsc15_raw", "movielens", "diginetica", "lastfm", "csv", "parquet"
]


class SourceConfig(StrictModel):
    format: SourceFormat
    path: str | None = None
    """One input file (split by ``split.name``)."""
    paths: dict[str, str] | None = None
    """Already-split inputs, split name -> file (``split.name: predefined``)."""
    column_map: dict[str, str] = Field(default_factory=dict)
    """Generic csv/parquet: canonical column -> file column."""
    ts_format: Literal["unix_s", "unix_ms", "iso", "date", "dmy"] = "unix_s"
    sep: str = ","
    event: str | None = None
    item_metadata: str | None = None
    user_metadata: str | None = None

    @model_validator(mode="after")
    def _one_input(self) -> SourceConfig:
        if (self.path is None) == (self.paths is None):
            raise ValueError("give exactly one of source.path or source.paths")
        if self.paths is not None and not self.paths:
            raise ValueError("source.paths is empty")
        return self


class ValidateConfig(StrictModel):
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    min_ts: date = date(1990, 1, 1)
    max_ts: date = date(2100, 1, 1)


class SessionizeConfig(StrictModel):
    gap_minutes: float = Field(30.0, gt=0)
    """Inactivity gap that starts a new session (sources without session ids)."""


class FilterConfig(StrictModel):
    value_above: float | None = None
    """Keep only rows whose value is above this (MovieLens: 3 = ratings 4-5 as purchases)."""
    min_session_length: int = Field(2, ge=1)
    min_item_support: int = Field(5, ge=1)
    min_events_per_user: int | None = Field(None, ge=1)
    max_events_per_user: int | None = Field(None, ge=1)
    max_rounds: int = Field(1, ge=0)
    """1: one pass (GRU4Rec's original); 0: repeat until a fixed point."""


class SplitConfig(StrictModel):
    name: Literal["session_time", "date_windows", "user_holdout", "predefined"] = "session_time"
    # session_time
    test_days: float | None = Field(1.0, gt=0)
    test_fraction: float | None = Field(None, gt=0, lt=1)
    valid_days: float | None = Field(1.0, gt=0)
    min_test_session_length: int = Field(2, ge=1)
    # date_windows (seed 000 section 3.1)
    dx: date | None = None
    dxy: date | None = None
    dyz: date | None = None
    dz: date | None = None
    min_input_events: int = Field(1, ge=1)
    min_output_events: int = Field(1, ge=1)
    valid_shift_days: int = Field(30, ge=1)
    # user_holdout
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    holdout_test_fraction: float = Field(0.1, gt=0, lt=1)
    n_targets: int = Field(1, ge=1)
    seed: int = 0
    # predefined
    index_split: str = "train_full"

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.name == "session_time" and (self.test_days is None) == (self.test_fraction is None):
            raise ValueError("split.session_time needs exactly one of test_days or test_fraction")
        if self.name == "date_windows":
            missing = [k for k in ("dx", "dxy", "dyz", "dz") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"split.date_windows needs {', '.join('split.' + m for m in missing)}")
            if not self.dx < self.dxy < self.dyz < self.dz:
                raise ValueError(
                    f"split windows must satisfy dx < dxy < dyz < dz, got {self.dx}, {self.dxy}, "
                    f"{self.dyz}, {self.dz}"
                )
        return self


class OutputConfig(StrictModel):
    path: str = "outputs/preprocessed"
    shard_rows: int = Field(500_000, ge=1000)
    overwrite: bool = True


class RayConfig(StrictModel):
    address: str | None = None
    """None: start (or join) a local Ray; "auto": the running cluster."""
    num_cpus: int | None = None
    partitions: int = Field(8, ge=1)
    """Key partitions for per-user/per-session work (repartition by key + map_batches)."""
    use_ray: bool = True
    """False runs the same steps in one process (the benchmark's pandas row)."""


class PreprocessJobConfig(StrictModel):
    source: SourceConfig
    validation: ValidateConfig = Field(default_factory=ValidateConfig)
    sessionize: SessionizeConfig = Field(default_factory=SessionizeConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

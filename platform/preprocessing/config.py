"""``PreprocessJobConfig``: the typed config of ``rayrec.jobs.preprocess``."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from rayrec.platform.config import StrictModel

SourceFormat = Literal[
    "rsc15_prepared", "rsc15_raw", "movielens", "diginetica", "lastfm", "csv", "parquet"
]

#: the canonical input columns a generic ``csv`` / ``parquet`` source maps onto
CANONICAL_COLUMNS = ("user_id", "session_id", "item_id", "ts", "event", "value")
TsTies = Literal["by_item", "keep_file_order", "error"]


class SourceConfig(StrictModel):
    format: SourceFormat
    path: str | None = None
    """One input file (split by ``split.name``)."""
    paths: dict[str, str] | None = None
    """Already-split inputs, split name -> file (``split.name: predefined``)."""
    column_map: dict[str, str] = Field(default_factory=dict)
    """Generic csv/parquet: canonical column -> file column (``item_id`` and ``ts`` required,
    and ``user_id`` or ``session_id``; one file column may feed two canonical names)."""
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
        if self.format in ("csv", "parquet"):
            check_column_map(self.column_map)
        elif self.column_map:
            raise ValueError(
                f"source.column_map applies to format csv or parquet only (format is {self.format!r})")
        return self


def check_column_map(column_map: dict[str, str], where: str = "source.column_map") -> None:
    """The generic reader's map (canonical name -> file column): names, required keys."""
    allowed = ", ".join(CANONICAL_COLUMNS)
    unknown = sorted(set(column_map) - set(CANONICAL_COLUMNS))
    if unknown:
        raise ValueError(
            f"{where}: unknown canonical column(s) {unknown}; allowed canonical names (the keys; "
            f"the values are the file's columns): {allowed}")
    missing = [c for c in ("item_id", "ts") if c not in column_map]
    if "user_id" not in column_map and "session_id" not in column_map:
        missing.append("user_id or session_id")
    if missing:
        raise ValueError(
            f"{where}: missing {', '.join(missing)}; required: item_id, ts and user_id or "
            f"session_id (allowed canonical names: {allowed}); got {dict(column_map)}")


class ValidateConfig(StrictModel):
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    min_ts: date = date(1990, 1, 1)
    max_ts: date = date(2100, 1, 1)


class SessionizeConfig(StrictModel):
    gap_minutes: float = Field(30.0, gt=0)
    """Inactivity gap that starts a new session (sources without session ids)."""
    ts_ties: TsTies = "by_item"
    """Order of events of one session (or user) with the same ``ts``: ``by_item`` (item id,
    then file order; independent of the file's row order), ``keep_file_order`` (the order of
    the rows in the file, sources in list order) or ``error`` (any tie fails the job)."""
    ties_warn_fraction: float = Field(0.05, ge=0.0, le=1.0)
    """Warn (and say so in the manifest) when more than this share of the events tie with an
    earlier event of their session on ``ts`` (day-granular timestamps)."""


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
    item_index_from: str | None = None
    """A previous ``items.parquet`` (or the preprocess output directory holding it): its items
    keep their ``item_idx``, items new in this run's training data are appended after them
    (by popularity), so checkpoints of the previous run stay valid (``train.init_from``)."""


class RayConfig(StrictModel):
    address: str | None = None
    """None: start (or join) a local Ray; "auto": the running cluster."""
    num_cpus: int | None = None
    partitions: int = Field(8, ge=1)
    """Key partitions for per-user/per-session work (repartition by key + map_batches)."""
    use_ray: bool | Literal["auto"] = "auto"
    """True: Ray Data tasks; False: the same steps in one process (the benchmark's pandas row);
    ``auto``: in this process below ``auto_max_mb`` of input files (10k rows: 0.3 s in-process
    vs 25 s with Ray's start-up), on Ray above it or when joining a cluster (``address`` or
    ``RAY_ADDRESS``); the log says which."""
    auto_max_mb: float = Field(32.0, ge=0)
    """``use_ray: auto``: input size (MB, all input files) from which the job runs on Ray."""


def _one_or_many(value: Any) -> str:
    return "list" if isinstance(value, (list, tuple)) else "source"


Sources = Annotated[
    Union[Annotated[SourceConfig, Tag("source")], Annotated[list[SourceConfig], Tag("list")]],
    Discriminator(_one_or_many),
]


class PreprocessJobConfig(StrictModel):
    source: Sources
    """One source, or a list (history + Serve event logs ...): rows of all of them are
    merged; an event found in several sources is kept once (``counts.dedupe``)."""
    validation: ValidateConfig = Field(default_factory=ValidateConfig)
    sessionize: SessionizeConfig = Field(default_factory=SessionizeConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _sources(self) -> PreprocessJobConfig:
        if isinstance(self.source, list):
            if not self.source:
                raise ValueError("source: the list of sources is empty")
            for i, s in enumerate(self.source):
                if s.paths is not None:
                    raise ValueError(f"source.{i}.paths: a list of sources takes source.N.path only "
                                     "(already-split inputs are one source with paths)")
        return self

    @property
    def sources(self) -> list[SourceConfig]:
        return list(self.source) if isinstance(self.source, list) else [self.source]

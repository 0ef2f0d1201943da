"""Validation: raw string rows -> typed canonical rows, or quarantine with a reason.

Pure, vectorised pandas functions (no Ray): the preprocess job runs them per block
on Ray Data, the tests call them directly.  Each row of the input ends up in exactly
one of the two outputs, so nothing is lost silently:

- ``good``: canonical columns typed (``ts`` as int64 epoch-milliseconds, ``value``
  float32 or NaN when the source has none) plus ``source_file``/``source_row``;
- ``bad``: the raw strings plus ``reason`` (one of :data:`REASONS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rayrec.platform.schema import MAX_TS_SECONDS, MIN_TS_SECONDS

REASONS = (
    "invalid utf-8",
    "truncated line",
    "too many fields",
    "missing item_id",
    "missing session_id and user_id",
    "unparseable ts",
    "negative ts",
    "ts out of range",
    "unparseable value",
    "non-finite value",
    "exact duplicate",
    "duplicate across sources",
)

RAW_COLUMNS = ["user_id", "session_id", "item_id", "ts", "event", "value"]


class ValidationFailed(ValueError):
    """Too many bad rows: the message names the file, a row and the reason."""


@dataclass(frozen=True)
class TsRange:
    min_s: float = MIN_TS_SECONDS
    max_s: float = MAX_TS_SECONDS


def parse_ts_ms(raw: pd.Series, ts_format: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse timestamps to epoch milliseconds (float, NaN where unparseable).

    Returns ``(ms, parsed_ok)``.  Formats: ``unix_s`` / ``unix_ms`` (numbers),
    ``iso`` (ISO 8601, UTC when no zone), ``date`` (YYYY-MM-DD), ``dmy`` (Y-M-D parts
    without padding, Last.fm), ``date_plus_ms`` (``YYYY-MM-DD+<ms offset>``, DIGINETICA).
    """
    s = raw.astype("string")
    if ts_format in ("unix_s", "unix_ms"):
        num = pd.to_numeric(s, errors="coerce").astype("float64").to_numpy(na_value=np.nan)
        ok = ~np.isnan(num)
        # inf parses as a number but is not a time
        ok &= np.isfinite(np.where(ok, num, 0.0))
        ms = num * (1000.0 if ts_format == "unix_s" else 1.0)
        return np.where(ok, ms, np.nan), ok
    if ts_format in ("iso", "date", "dmy"):
        fmt = {"iso": "ISO8601", "date": "%Y-%m-%d", "dmy": "%Y-%m-%d"}[ts_format]
        dt = pd.to_datetime(s, errors="coerce", utc=True, format=fmt)
        ok = dt.notna().to_numpy()
        ms = np.full(len(s), np.nan)
        ms[ok] = dt[ok].astype("datetime64[ms, UTC]").astype("int64").to_numpy()
        return ms, ok
    if ts_format == "date_plus_ms":
        parts = s.str.split("+", n=1, expand=True)
        if parts.shape[1] < 2:
            parts[1] = pd.NA
        dt = pd.to_datetime(parts[0], errors="coerce", utc=True, format="%Y-%m-%d")
        off = pd.to_numeric(parts[1], errors="coerce").astype("float64").to_numpy(na_value=np.nan)
        ok = dt.notna().to_numpy() & np.isfinite(off)
        ms = np.full(len(s), np.nan)
        ms[ok] = dt[ok].astype("datetime64[ms, UTC]").astype("int64").to_numpy() + off[ok]
        return ms, ok
    raise ValueError(f"unknown ts_format {ts_format!r}")


def validate_frame(
    raw: pd.DataFrame, ts_format: str, has_sessions: bool, ts_range: TsRange = TsRange()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw rows into (good, bad).  The first failing check names the reason."""
    n = len(raw)
    reason = np.full(n, None, dtype=object)

    def mark(mask: np.ndarray, why: str) -> None:
        sel = mask & pd.isna(reason)
        reason[sel] = why

    mark(raw["item_id"].isna().to_numpy(), "missing item_id")
    if has_sessions:
        mark(raw["session_id"].isna().to_numpy(), "missing session_id and user_id")
    else:
        mark(raw["user_id"].isna().to_numpy(), "missing session_id and user_id")
    if "_ts_format" in raw.columns:  # several sources, several formats: per source
        ms, ok = np.full(n, np.nan), np.zeros(n, dtype=bool)
        fmts = raw["_ts_format"].astype(object).to_numpy()
        for fmt in pd.unique(fmts):
            sel = fmts == fmt
            ms[sel], ok[sel] = parse_ts_ms(raw["ts"].loc[sel], str(fmt))
    else:
        ms, ok = parse_ts_ms(raw["ts"], ts_format)
    mark(~ok, "unparseable ts")
    with np.errstate(invalid="ignore"):
        mark(ok & (ms < 0), "negative ts")
        mark(ok & ((ms < ts_range.min_s * 1000) | (ms > ts_range.max_s * 1000)), "ts out of range")
    value_raw = raw["value"]
    has_value = value_raw.notna().to_numpy()
    val = pd.to_numeric(value_raw, errors="coerce").astype("float64").to_numpy(na_value=np.nan)
    mark(has_value & np.isnan(val) & ~_is_nan_literal(value_raw), "unparseable value")
    mark(has_value & ~np.isfinite(val), "non-finite value")

    bad_mask = ~pd.isna(reason)
    bad = raw.loc[bad_mask].copy()
    bad["reason"] = pd.array(reason[bad_mask], dtype="string")
    keep = ["user_id", "session_id", "item_id", "event", "source_file", "source_row"]
    keep += [c for c in raw.columns if c.startswith("_")]  # pipeline tags such as _split
    good = raw.loc[~bad_mask, keep].copy()
    good["ts"] = ms[~bad_mask].astype(np.int64)
    good["value"] = val[~bad_mask].astype(np.float32)
    return good.reset_index(drop=True), bad.reset_index(drop=True)


def _is_nan_literal(s: pd.Series) -> np.ndarray:
    """'nan', 'inf' spelled out parse as floats: they are non-finite, not unparseable."""
    low = s.astype("string").str.lower().str.strip()
    return low.isin(["nan", "inf", "-inf", "+inf", "infinity", "-infinity"]).fillna(False).to_numpy(dtype=bool)


ACROSS_SOURCES = "duplicate across sources"


def split_duplicates(good: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exact duplicates (same user, session, item, ts, event, value): keep the first
    occurrence by source order (``_src``, the source's position in the job's list, then the
    row), the rest get a reason: ``exact duplicate`` within one file (bad data, counted
    against ``validation.max_bad_fraction``), :data:`ACROSS_SOURCES` when the copy is in
    another source (history and an event log overlap: expected, not bad data).  Already-split
    inputs (train_full and its sub-split train_tr) legitimately share rows across files: rows
    of different ``_split`` are never duplicates."""
    if good.empty:
        return good, good.assign(reason=pd.Series(dtype="string"))
    key = ["user_id", "session_id", "item_id", "ts", "event", "value"]
    key += [c for c in ("_split",) if c in good.columns]
    first_key = ["_src", "source_file"] if "_src" in good.columns else ["source_file"]
    order = good.sort_values([*first_key, "source_row"], kind="stable")
    dup = order.duplicated(subset=key, keep="first").to_numpy()
    bad = order.loc[dup].copy()
    if len(bad):
        first_file = order.groupby(key, sort=False, dropna=False)["source_file"].transform("first")
        same = (first_file.loc[dup].astype(object).to_numpy() == bad["source_file"].astype(object).to_numpy())
        bad["reason"] = pd.array(np.where(same, "exact duplicate", ACROSS_SOURCES), dtype="string")
    else:
        bad["reason"] = pd.array([], dtype="string")
    return order.loc[~dup], bad


def check_bad_share(
    n_total: int, bad: pd.DataFrame, max_bad_fraction: float, what: str = "input"
) -> None:
    """Fail with the file, the first bad row and its reason when too much is bad."""
    if n_total == 0:
        raise ValidationFailed(f"{what}: no rows")
    bad = bad.loc[bad["reason"] != ACROSS_SOURCES]  # overlapping sources are not bad data
    if bad.empty:
        return
    share = len(bad) / n_total
    if share > max_bad_fraction:
        first = bad.sort_values(["source_file", "source_row"]).iloc[0]
        counts = bad["reason"].value_counts().to_dict()
        raise ValidationFailed(
            f"{what}: {len(bad)} of {n_total} rows ({share:.1%}) are bad, above the limit "
            f"validation.max_bad_fraction={max_bad_fraction:.2%}; first: file {first['source_file']} "
            f"row {int(first['source_row'])}: {first['reason']}; counts by reason: {counts}"
        )

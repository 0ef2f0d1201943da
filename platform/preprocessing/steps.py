"""Pure, vectorised preprocessing steps on typed canonical frames (no Ray).

A typed frame has ``user_id``, ``session_id``, ``item_id``, ``event`` (strings),
``ts`` (int64 epoch ms), ``value`` (float32), ``source_file``, ``source_row``.  The
job runs :func:`sessionize` per key partition on Ray Data and the global steps
(filters, index, splits) on the gathered columns; a pandas-only run of the same
functions is the benchmark's comparison row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

DAY_MS = 86_400_000


# ---- sessionize -------------------------------------------------------------------


def tie_order(df: pd.DataFrame, ties: str = "by_item") -> list[str]:
    """Sort keys after ``ts`` that order events with equal timestamps (``sessionize.ts_ties``):
    ``by_item``: item id, then file order; ``keep_file_order`` (and ``error``, where no tie is
    left to order): the source's position in the job's list (``_src``), then the file row."""
    src = [c for c in ("_src", "source_file", "source_row") if c in df.columns]
    if ties == "by_item":
        return ["item_id", *src]
    return src


def count_ts_ties(df: pd.DataFrame) -> int:
    """Events that share ``(session_id, ts)`` with an earlier event of their session."""
    if df.empty:
        return 0
    return int(df.duplicated(subset=["session_id", "ts"], keep="first").sum())


def sessionize(df: pd.DataFrame, gap_seconds: float, ties: str = "by_item") -> pd.DataFrame:
    """Give rows without a ``session_id`` one: per user, events sorted by time (equal times
    by :func:`tie_order`), a new session whenever the gap to the previous event exceeds
    ``gap_seconds``.

    Session ids are ``"<user_id>:<k>"`` with ``k`` counting the user's sessions from 0,
    so they are deterministic and independent of partitioning.
    """
    if df.empty:
        return df
    need = df["session_id"].isna().to_numpy()
    if not need.any():
        return df
    todo = df.loc[need].sort_values(["user_id", "ts", *tie_order(df, ties)], kind="stable")
    user = todo["user_id"].to_numpy(dtype=object)
    ts = todo["ts"].to_numpy(dtype=np.int64)
    new_user = np.ones(len(todo), dtype=bool)
    new_user[1:] = user[1:] != user[:-1]
    gap = np.zeros(len(todo), dtype=bool)
    gap[1:] = (ts[1:] - ts[:-1]) > gap_seconds * 1000
    starts = new_user | gap
    # k-th session of the user = number of starts since the user's first row - 1
    cum = np.cumsum(starts)
    first_of_user = np.maximum.accumulate(np.where(new_user, np.arange(len(todo)), 0))
    k = cum - cum[first_of_user]
    todo = todo.assign(
        session_id=pd.array(
            [f"{u}:{i}" for u, i in zip(user, k.tolist())], dtype="string"
        )
    )
    return pd.concat([df.loc[~need], todo], ignore_index=True)


# ---- filters ---------------------------------------------------------------------


@dataclass
class FilterReport:
    rounds: int = 0
    fixed_point: bool = False
    dropped: dict[str, int] = field(default_factory=dict)

    def add(self, step: str, n: int) -> None:
        self.dropped[step] = self.dropped.get(step, 0) + int(n)


def _keep_by_count(keys: np.ndarray | pd.Series, lo: int | None, hi: int | None) -> np.ndarray:
    """Row mask: the row's key occurs between ``lo`` and ``hi`` times (hash-based)."""
    codes, _ = pd.factorize(keys, use_na_sentinel=False)
    counts = np.bincount(codes)
    ok = np.ones(len(counts), dtype=bool)
    if lo is not None:
        ok &= counts >= lo
    if hi is not None:
        ok &= counts <= hi
    return ok[codes]


def apply_filters(
    df: pd.DataFrame,
    min_session_length: int = 2,
    min_item_support: int = 5,
    min_events_per_user: int | None = None,
    max_events_per_user: int | None = None,
    max_rounds: int = 1,
) -> tuple[pd.DataFrame, FilterReport]:
    """Drop short sessions, rare items and out-of-bounds users.

    One round applies, in order: sessions shorter than ``min_session_length``, items with
    fewer than ``min_item_support`` events, users outside the per-user bounds (bulk
    accounts), then short sessions again (removing items shortens sessions), as in the
    GRU4Rec preprocessing.  ``max_rounds=1`` is that single pass (the original protocol,
    which does not reach a fixed point); ``max_rounds=0`` repeats until nothing changes.
    The report says how many rounds ran and whether a fixed point was reached.
    """
    rep = FilterReport()
    rnd = 0
    while True:
        rnd += 1
        before = len(df)
        sess = df["session_id"]
        keep = _keep_by_count(sess, min_session_length, None)
        rep.add("min_session_length", (~keep).sum())
        df = df.loc[keep]
        keep = _keep_by_count(df["item_id"], min_item_support, None)
        rep.add("min_item_support", (~keep).sum())
        df = df.loc[keep]
        if min_events_per_user is not None or max_events_per_user is not None:
            users = df["user_id"].fillna("")
            keep = _keep_by_count(users, min_events_per_user, max_events_per_user)
            keep |= df["user_id"].isna().to_numpy()  # anonymous sessions have no user bound
            rep.add("user_event_bounds", (~keep).sum())
            df = df.loc[keep]
        keep = _keep_by_count(df["session_id"], min_session_length, None)
        rep.add("min_session_length", (~keep).sum())
        df = df.loc[keep]
        changed = len(df) != before
        if not changed:
            rep.fixed_point = True
        if not changed or (max_rounds and rnd >= max_rounds):
            break
    rep.rounds = rnd
    if not rep.fixed_point:
        # one more check, without changing anything, so the manifest is truthful
        s = _keep_by_count(df["session_id"], min_session_length, None)
        i = _keep_by_count(df["item_id"], min_item_support, None)
        rep.fixed_point = bool(s.all() and i.all())
    return df.reset_index(drop=True), rep


# ---- item index ------------------------------------------------------------------


def build_item_index(train: pd.DataFrame) -> pd.DataFrame:
    """Dense ``item_idx`` ordered by training popularity (desc), ties by ``item_id``."""
    counts = train["item_id"].value_counts(sort=False)
    items = pd.DataFrame({"item_id": counts.index.astype("string"), "count": counts.to_numpy()})
    items = items.sort_values(["count", "item_id"], ascending=[False, True], kind="stable")
    items["item_idx"] = np.arange(len(items), dtype=np.int32)
    return items[["item_idx", "item_id", "count"]].reset_index(drop=True).astype(
        {"item_id": "string", "count": "int64"}
    )


def extend_item_index(previous: pd.DataFrame, train: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """A stable item index: every item of ``previous`` (``item_idx, item_id[, count]``) keeps
    its ``item_idx``; items of ``train`` not in it are appended after them by training
    popularity (desc, ties by ``item_id``).  ``count`` is this run's training count (0 for a
    previous item absent from ``train``).  Returns (index, number of new items)."""
    prev = previous.sort_values("item_idx", kind="stable").reset_index(drop=True)
    counts = train["item_id"].value_counts(sort=False)
    old_ids = prev["item_id"].astype(str)
    old_counts = old_ids.map(counts).fillna(0).astype(np.int64).to_numpy()
    new = build_item_index(train.loc[~train["item_id"].astype(str).isin(set(old_ids))])
    new["item_idx"] = (new["item_idx"].to_numpy() + len(prev)).astype(np.int32)
    kept = pd.DataFrame({"item_idx": np.arange(len(prev), dtype=np.int32), "item_id": old_ids,
                         "count": old_counts})
    out = pd.concat([kept, new[["item_idx", "item_id", "count"]]], ignore_index=True)
    return out.astype({"item_idx": np.int32, "item_id": "string", "count": "int64"}), int(len(new))


def attach_index(df: pd.DataFrame, items: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Add ``item_idx``; rows whose item is not in the index are removed and counted."""
    mapping = pd.Series(items["item_idx"].to_numpy(), index=items["item_id"].astype(object))
    idx = df["item_id"].astype(object).map(mapping)
    known = idx.notna().to_numpy()
    out = df.loc[known].copy()
    out["item_idx"] = idx[known].astype(np.int32).to_numpy()
    return out, int((~known).sum())


def drop_short_sessions(df: pd.DataFrame, min_len: int) -> tuple[pd.DataFrame, int]:
    keep = _keep_by_count(df["session_id"], min_len, None)
    return df.loc[keep], int((~keep).sum())


# ---- splits ----------------------------------------------------------------------


def session_time_split(
    df: pd.DataFrame, test_days: float | None, test_fraction: float | None
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Whole sessions by time (seed 003 protocol): sessions whose LAST event is within
    the final ``test_days`` (or the latest ``test_fraction`` of sessions by end time)
    are test.  Returns (train, test, boundary_ms)."""
    end = df.groupby("session_id", sort=False)["ts"].max()
    if test_days is not None:
        boundary = int(df["ts"].max() - test_days * DAY_MS)
    else:
        boundary = int(np.quantile(end.to_numpy(), 1.0 - float(test_fraction)))
    test_sessions = end.index[end.to_numpy() >= boundary]
    is_test = df["session_id"].isin(test_sessions).to_numpy()
    return df.loc[~is_test], df.loc[is_test], boundary


def date_window_masks(ts: np.ndarray, bounds: list[int]) -> list[np.ndarray]:
    """[lo, hi) masks for consecutive bounds."""
    return [(ts >= lo) & (ts < hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


def users_with(df: pd.DataFrame, mask: np.ndarray, minimum: int) -> set:
    counts = df.loc[mask, "user_id"].value_counts()
    return set(counts.index[counts.to_numpy() >= minimum])


def date_windows_split(
    df: pd.DataFrame, dx: int, dxy: int, dyz: int, dz: int, min_input: int, min_output: int
) -> dict[str, pd.DataFrame]:
    """Seed 000 section 3.1: training input X = [dx, dxy), output Y = [dxy, dyz);
    test input XY = [dx, dyz), output Z = [dyz, dz).  A user is kept in a pair only with
    at least ``min_input`` input-window and ``min_output`` output-window events."""
    if not dx < dxy < dyz < dz:
        raise ValueError(
            f"split windows must satisfy dx < dxy < dyz < dz, got {_iso(dx)}, {_iso(dxy)}, "
            f"{_iso(dyz)}, {_iso(dz)}"
        )
    ts = df["ts"].to_numpy()
    x, y, z = date_window_masks(ts, [dx, dxy, dyz, dz])
    xy = x | y
    tr_users = users_with(df, x, min_input) & users_with(df, y, min_output)
    te_users = users_with(df, xy, min_input) & users_with(df, z, min_output)
    uid = df["user_id"]
    tr = uid.isin(tr_users).to_numpy()
    te = uid.isin(te_users).to_numpy()
    return {
        "train_x": df.loc[x & tr],
        "train_y": df.loc[y & tr],
        "test_x": df.loc[xy & te],
        "test_y": df.loc[z & te],
    }


def _iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d")


def user_bucket(user_ids: pd.Series, seed: int) -> np.ndarray:
    """A deterministic uniform [0, 1) number per user (hash of seed and id)."""
    uniq = pd.unique(user_ids.astype(object))
    vals = {
        u: int.from_bytes(hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=8).digest(), "big")
        / 2**64
        for u in uniq
    }
    return user_ids.astype(object).map(vals).to_numpy(dtype=np.float64)


def user_holdout_split(
    df: pd.DataFrame, valid_fraction: float, test_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """Seeds 001/002: users split into train / valid / test by a seeded hash of the id."""
    b = user_bucket(df["user_id"], seed)
    is_test = b < test_fraction
    is_valid = (b >= test_fraction) & (b < test_fraction + valid_fraction)
    return {"train": df.loc[~is_test & ~is_valid], "valid": df.loc[is_valid], "test": df.loc[is_test]}


def holdout_targets(part: pd.DataFrame, n_targets: int, ties: str = "by_item") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The last ``n_targets`` events (by time) of each held-out user are its targets, the
    earlier ones its input; a user with no more than ``n_targets`` events has no history
    to recommend from and is left out of both (the caller counts the rows)."""
    part = part.sort_values(["user_id", "ts", *tie_order(part, ties)], kind="stable")
    rank_from_end = part.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    n_per_user = part.groupby("user_id", sort=False)["ts"].transform("size").to_numpy()
    target = rank_from_end < n_targets
    ok = n_per_user > n_targets
    return part.loc[~target & ok], part.loc[target & ok]


def sort_canonical(df: pd.DataFrame, ties: str = "by_item") -> pd.DataFrame:
    """The one output order: sessions by start time, events by time within a session (equal
    times by :func:`tie_order`)."""
    if df.empty:
        return df.reset_index(drop=True)
    start = df.groupby("session_id", sort=False)["ts"].transform("min")
    return (
        df.assign(_start=start.to_numpy())
        .sort_values(["_start", "session_id", "ts", *tie_order(df, ties)], kind="stable")
        .drop(columns="_start")
        .reset_index(drop=True)
    )

"""Session-parallel mini-batches (seed 003 section 3.1.1, Figure 2).

Sessions are put in an order; the first events of the first B sessions form the first
mini-batch input, their second events the desired output; the next mini-batch is formed
from the second (input) and third (output) events, and so on. When a row's session ends,
the next unstarted session takes the row and the row's hidden state is reset. When no
sessions remain, finished rows are dropped and the batch shrinks.

Sessions with fewer than 2 events carry no (input, next item) pair: :class:`SessionArrays`
keeps them (it is a faithful copy of the data), and :func:`session_parallel_batches` skips them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "ItemFeatures", "SessionArrays", "group_by_user", "item_counts", "n_training_pairs", "ts_seconds",
    "session_parallel_batches",
]



def ts_seconds(ts: pd.Series) -> np.ndarray:
    """Event times as float seconds since the epoch: datetimes (UTC, tz-aware or naive) or
    numbers already in seconds."""
    if pd.api.types.is_datetime64_any_dtype(ts):
        if getattr(ts.dt, "tz", None) is not None:
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        return ts.to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9
    return ts.to_numpy(dtype=np.float64)


@dataclass
class ItemFeatures:
    """Categorical item metadata as vocabulary ids, one row per item of the item index.

    ``names``: the metadata columns (fields), in order. ``ids`` int64 (N, L): the item's value
    ids, every field's slots side by side (``slot_field`` int64 (L,) names each slot's field);
    a multi-valued field has several slots, unused slots hold -1. Vocabularies are per field,
    built from the training rows; id 0 of every field is *unknown* (an item without metadata,
    a value never seen in training), so ``vocab_sizes[f]`` counts it. ``n_unknown``: items
    per field that got id 0."""

    names: tuple[str, ...]
    ids: np.ndarray
    slot_field: np.ndarray
    vocab_sizes: tuple[int, ...]
    n_unknown: dict[str, int] = field(default_factory=dict)


@dataclass
class SessionArrays:
    """Sessions in CSR form: session s holds ``items[offsets[s]:offsets[s + 1]]`` in time order.

    ``offsets`` int64 (S + 1,), ``items`` int64 (E,), ``ts`` float64 (E,) seconds or None.
    Sessions are ordered by start time (ties by session id).

    Per-event context (None when not loaded; models that do not read it never see a
    difference): ``events`` int64 (E,) event-type codes into ``event_names`` (code 0 =
    unknown type, ``event_names[0]`` is ``""``); ``values`` float32 (E,) the event's value
    (NaN = none); ``users`` int64 (E,) user codes (-1 = no user). ``item_features``: the
    item metadata of the catalog (:class:`ItemFeatures`) when the data has it.
    """

    offsets: np.ndarray
    items: np.ndarray
    ts: np.ndarray | None = None
    events: np.ndarray | None = None
    values: np.ndarray | None = None
    users: np.ndarray | None = None
    event_names: tuple[str, ...] = ("",)
    item_features: ItemFeatures | None = None

    def __post_init__(self) -> None:
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        self.items = np.ascontiguousarray(self.items, dtype=np.int64)
        if self.offsets.ndim != 1 or self.offsets.size < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be a 1-D array starting at 0")
        if self.offsets[-1] != self.items.size:
            raise ValueError(
                f"offsets[-1]={int(self.offsets[-1])} must equal len(items)={self.items.size}"
            )
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing")
        if self.items.size and self.items.min() < 0:
            raise ValueError("items must be non-negative item_idx values")
        if self.ts is not None:
            self.ts = np.ascontiguousarray(self.ts, dtype=np.float64)
            if self.ts.shape != self.items.shape:
                raise ValueError(f"ts shape {self.ts.shape} != items shape {self.items.shape}")
        for name, dtype in (("events", np.int64), ("values", np.float32), ("users", np.int64)):
            a = getattr(self, name)
            if a is not None:
                a = np.ascontiguousarray(a, dtype=dtype)
                if a.shape != self.items.shape:
                    raise ValueError(f"{name} shape {a.shape} != items shape {self.items.shape}")
                setattr(self, name, a)

    @property
    def n_sessions(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def n_events(self) -> int:
        return int(self.items.size)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, event_names: tuple[str, ...] | None = None) -> SessionArrays:
        """Build from columns ``session_id``, ``item_idx``, ``ts`` (datetime64 or float seconds).

        Sessions are ordered by their first event's time (ties by session_id); events within a
        session by ts (stable, so equal timestamps keep their row order). Optional columns
        ``event``, ``value``, ``user_id`` become the per-event context; ``event_names`` is the
        event-type vocabulary (``""`` first; default: this frame's types, sorted), types outside
        it get code 0.
        """
        missing = [c for c in ("session_id", "item_idx", "ts") if c not in df.columns]
        if missing:
            raise ValueError(f"from_frame: missing column(s) {missing}; got {list(df.columns)}")
        t = ts_seconds(df["ts"])
        item = df["item_idx"].to_numpy()
        if not np.issubdtype(item.dtype, np.integer):
            raise ValueError(f"from_frame: item_idx must be integer, got dtype {item.dtype}")
        sid = df["session_id"].to_numpy()
        # session code in order of first appearance, then its start time
        codes, uniq = pd.factorize(sid)
        start = np.full(len(uniq), np.inf)
        np.minimum.at(start, codes, t)
        # rank sessions by (start time, session id)
        sess_order = np.lexsort((np.asarray(uniq), start))  # primary key last
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[sess_order] = np.arange(len(uniq))
        row_rank = rank[codes]
        order = np.lexsort((np.arange(len(t)), t, row_rank))  # session rank, ts, row (stable)
        counts = np.bincount(row_rank, minlength=len(uniq))
        offsets = np.zeros(len(uniq) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        ctx: dict = {}
        if "event" in df.columns:
            ev = df["event"].astype(object).where(df["event"].notna(), "").astype(str).to_numpy()
            if event_names is None:
                event_names = ("", *sorted(set(ev) - {""}))
            code = {n: i for i, n in enumerate(event_names)}
            ctx["events"] = np.fromiter((code.get(e, 0) for e in ev[order]), np.int64, len(order))
            ctx["event_names"] = tuple(event_names)
        if "value" in df.columns:
            ctx["values"] = df["value"].to_numpy(dtype=np.float32, na_value=np.nan)[order]
        if "user_id" in df.columns:
            ucodes, _ = pd.factorize(df["user_id"].to_numpy(), use_na_sentinel=True)
            ctx["users"] = ucodes.astype(np.int64)[order]
        return cls(offsets, item[order].astype(np.int64), t[order], **ctx)


def group_by_user(a: SessionArrays) -> SessionArrays:
    """``train.sequence_key: user``: each user's sessions as one sequence (events by time,
    ties in their session order), sequences ordered by their first event; events without a
    user keep their session as a sequence of its own."""
    if a.users is None:
        raise ValueError("train.sequence_key=user needs the user of every event (the data has no user_id)")
    sess = np.repeat(np.arange(a.n_sessions), np.diff(a.offsets))
    n_users = int(a.users.max()) + 1 if a.users.size else 0
    key = np.where(a.users >= 0, a.users, n_users + sess)
    ts = a.ts if a.ts is not None else np.arange(a.n_events, dtype=np.float64)
    order = np.lexsort((np.arange(a.n_events), ts, key))
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    lens = np.diff(np.r_[starts, k.size])
    seq_order = np.lexsort((k[starts], ts[order][starts]))  # by first event's time, then key
    idx = np.concatenate([order[starts[s]: starts[s] + lens[s]] for s in seq_order]) if k.size else order
    offsets = np.zeros(lens.size + 1, dtype=np.int64)
    np.cumsum(lens[seq_order], out=offsets[1:])

    def pick(x):
        return None if x is None else x[idx]

    return SessionArrays(offsets, a.items[idx], pick(a.ts), pick(a.events), pick(a.values), pick(a.users),
                         a.event_names, a.item_features)


def n_training_pairs(arrays: SessionArrays) -> int:
    """Number of (input, next item) pairs: sum over sessions of (length - 1) for length >= 2."""
    lengths = np.diff(arrays.offsets)
    return int(np.maximum(lengths - 1, 0).sum())


def session_parallel_batches(
    arrays: SessionArrays,
    batch_size: int,
    shuffle_sessions: bool = False,
    rng: np.random.Generator | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(inputs (B,), targets (B,), reset (B,) bool, keep (B_prev,))`` per step.

    Row r runs one session; ``inputs[r]`` is its current item and ``targets[r]`` the next one.
    ``reset[r]`` is True on the first step of a session in row r (forget the hidden state).
    ``keep`` lists the rows of the *previous* step that continue (in order) into this step:
    ``hidden = hidden[keep]`` shrinks the state when sessions run out; on the first step
    it is ``arange(B)``. Apply ``keep`` first, then ``reset``.
    ``shuffle_sessions`` permutes the session order with ``rng`` (default: time order).
    Each pair (e, e + 1) within a session is yielded exactly once.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    offsets = arrays.offsets
    items = arrays.items
    lengths = np.diff(offsets)
    sess = np.flatnonzero(lengths >= 2)  # sessions with at least one pair
    if shuffle_sessions:
        rng = rng if rng is not None else np.random.default_rng()
        sess = sess[rng.permutation(sess.size)]
    n_sess = sess.size
    if n_sess == 0:
        return
    b = min(batch_size, n_sess)
    starts = offsets[sess]  # (n_sess,)
    ends = offsets[sess + 1]  # (n_sess,)
    pos = starts[:b].copy()  # (B,) index of the current input event per row
    end = ends[:b].copy()  # (B,) one past each row's session
    next_sess = b
    reset = np.ones(b, dtype=bool)
    keep = np.arange(b, dtype=np.int64)
    while True:
        # steps until the first row finishes: every row has >= 1 pair left
        run = int((end - pos).min()) - 1  # >= 1
        for k in range(run):
            p = pos + k
            yield items[p], items[p + 1], reset, keep
            if k == 0:
                reset = np.zeros(pos.size, dtype=bool)
                keep = np.arange(pos.size, dtype=np.int64)
        pos = pos + run
        done = np.flatnonzero(end - pos <= 1)  # rows whose session has no pair left
        n_new = min(done.size, n_sess - next_sess)
        reset = np.zeros(pos.size, dtype=bool)
        if n_new:
            rows = done[:n_new]
            new = np.arange(next_sess, next_sess + n_new)
            pos[rows] = starts[new]
            end[rows] = ends[new]
            reset[rows] = True
            next_sess += n_new
        if n_new < done.size:  # no sessions left for some finished rows: drop them
            alive = np.ones(pos.size, dtype=bool)
            alive[done[n_new:]] = False
            keep = np.flatnonzero(alive)
            if keep.size == 0:
                return
            pos, end, reset = pos[keep], end[keep], reset[keep]
        else:
            keep = np.arange(pos.size, dtype=np.int64)


def item_counts(arrays: SessionArrays, n_items: int) -> np.ndarray:
    """Occurrences of each item in the training events (N,) int64."""
    if arrays.items.size and arrays.items.max() >= n_items:
        raise ValueError(f"item_idx {int(arrays.items.max())} out of range for n_items={n_items}")
    return np.bincount(arrays.items, minlength=n_items).astype(np.int64)

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
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["SessionArrays", "item_counts", "n_training_pairs", "session_parallel_batches"]


@dataclass
class SessionArrays:
    """Sessions in CSR form: session s holds ``items[offsets[s]:offsets[s + 1]]`` in time order.

    ``offsets`` int64 (S + 1,), ``items`` int64 (E,), ``ts`` float64 (E,) seconds or None.
    Sessions are ordered by start time (ties by session id).
    """

    offsets: np.ndarray
    items: np.ndarray
    ts: np.ndarray | None = None

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

    @property
    def n_sessions(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def n_events(self) -> int:
        return int(self.items.size)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> SessionArrays:
        """Build from columns ``session_id``, ``item_idx``, ``ts`` (datetime64 or float seconds).

        Sessions are ordered by their first event's time (ties by session_id); events within a
        session by ts (stable, so equal timestamps keep their row order).
        """
        missing = [c for c in ("session_id", "item_idx", "ts") if c not in df.columns]
        if missing:
            raise ValueError(f"from_frame: missing column(s) {missing}; got {list(df.columns)}")
        ts = df["ts"]
        if pd.api.types.is_datetime64_any_dtype(ts):
            if getattr(ts.dt, "tz", None) is not None:
                ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
            t = ts.to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9
        else:
            t = ts.to_numpy(dtype=np.float64)
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
        return cls(offsets, item[order].astype(np.int64), t[order])


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

"""Session-parallel mini-batches (seed 003 section 3.1.1) and SessionArrays.from_frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayrec.models.session_parallel import (
    SessionArrays,
    item_counts,
    n_training_pairs,
    session_parallel_batches,
)


def _arrays(lengths: list[int]) -> SessionArrays:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # every event gets a unique "item" so positions can be recovered from items
    return SessionArrays(offsets, np.arange(offsets[-1], dtype=np.int64))


def _simulate(arrays: SessionArrays, batch_size: int, **kw) -> list[tuple[int, int]]:
    """Run the batcher, checking reset/keep against the event positions; return all pairs."""
    sess_of = np.repeat(np.arange(arrays.n_sessions), np.diff(arrays.offsets))
    pairs: list[tuple[int, int]] = []
    prev_rows: np.ndarray | None = None  # event index of each row's previous input
    for inputs, targets, reset, keep in session_parallel_batches(arrays, batch_size, **kw):
        b = inputs.shape[0]
        assert targets.shape == (b,) and reset.shape == (b,) and reset.dtype == bool
        assert 1 <= b <= batch_size
        if prev_rows is None:
            assert reset.all() and np.array_equal(keep, np.arange(b))
        else:
            assert keep.shape == (b,) and np.all(np.diff(keep) > 0)
            carried = prev_rows[keep]
            # a row continues its session (input = previous target) unless it was reset
            cont = ~reset
            assert np.array_equal(inputs[cont], carried[cont] + 1)
            assert np.all(sess_of[inputs[cont]] == sess_of[carried[cont]])
            # a reset row starts a different session at its first event
            first = arrays.offsets[sess_of[inputs[reset]]]
            assert np.array_equal(inputs[reset], first)
        assert np.array_equal(targets, inputs + 1)  # next event of the same session
        assert np.all(sess_of[targets] == sess_of[inputs])
        pairs.extend(zip(inputs.tolist(), targets.tolist()))
        prev_rows = inputs
    return pairs


def _expected_pairs(arrays: SessionArrays) -> list[tuple[int, int]]:
    out = []
    for s in range(arrays.n_sessions):
        a, b = arrays.offsets[s], arrays.offsets[s + 1]
        out.extend((e, e + 1) for e in range(a, b - 1))
    return out


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=9), min_size=0, max_size=40),
    batch_size=st.integers(min_value=1, max_value=12),
    shuffle=st.booleans(),
)
def test_every_pair_exactly_once(lengths: list[int], batch_size: int, shuffle: bool) -> None:
    arrays = _arrays(lengths)
    rng = np.random.default_rng(0) if shuffle else None
    pairs = _simulate(arrays, batch_size, shuffle_sessions=shuffle, rng=rng)
    assert sorted(pairs) == _expected_pairs(arrays)
    assert len(pairs) == n_training_pairs(arrays)


def test_paper_figure_2_layout() -> None:
    # sessions of lengths 4, 2, 3, 2 (events 0-3, 4-5, 6-8, 9-10) with B = 2
    arrays = _arrays([4, 2, 3, 2])
    got = [
        (i.tolist(), t.tolist(), r.tolist(), k.tolist())
        for i, t, r, k in session_parallel_batches(arrays, 2)
    ]
    assert got == [
        ([0, 4], [1, 5], [True, True], [0, 1]),
        ([1, 6], [2, 7], [False, True], [0, 1]),  # session 1 ended: session 2 takes row 1
        ([2, 7], [3, 8], [False, False], [0, 1]),
        ([9], [10], [True], [0]),  # both ended; session 3 takes row 0, row 1 is dropped
    ]


def test_time_order_and_reset_rows() -> None:
    arrays = _arrays([3, 3, 2])
    steps = list(session_parallel_batches(arrays, 2))
    # step 0: sessions 0 and 1; step 2: session 2 replaces both finished rows? only one left
    assert steps[0][0].tolist() == [0, 3]
    assert steps[2][0].tolist() == [6]
    assert steps[2][2].tolist() == [True]
    assert steps[2][3].tolist() == [0]


def test_from_frame_orders_sessions_and_events() -> None:
    df = pd.DataFrame(
        {
            "session_id": ["b", "a", "b", "c", "a", "c", "d"],
            "item_idx": [10, 20, 11, 30, 21, 31, 40],
            "ts": [5.0, 7.0, 1.0, 1.0, 3.0, 1.0, 0.5],
        }
    )
    arr = SessionArrays.from_frame(df)
    # start times: d 0.5, b 1.0, c 1.0 (tie with b -> by id), a 3.0
    assert arr.offsets.tolist() == [0, 1, 3, 5, 7]
    assert arr.items.tolist() == [40, 11, 10, 30, 31, 21, 20]
    assert arr.ts.tolist() == [0.5, 1.0, 5.0, 1.0, 1.0, 3.0, 7.0]
    # datetime64 ts gives the same order and seconds
    df2 = df.assign(ts=pd.to_datetime(df["ts"], unit="s"))
    arr2 = SessionArrays.from_frame(df2)
    assert arr2.items.tolist() == arr.items.tolist()
    np.testing.assert_allclose(arr2.ts, arr.ts)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="missing column"):
        SessionArrays.from_frame(pd.DataFrame({"session_id": [1], "ts": [0.0]}))
    with pytest.raises(ValueError, match="offsets"):
        SessionArrays(np.array([0, 3]), np.arange(2))
    with pytest.raises(ValueError, match="batch_size"):
        list(session_parallel_batches(_arrays([2]), 0))
    assert list(session_parallel_batches(_arrays([1, 0, 1]), 4)) == []


def test_item_counts() -> None:
    """Training occurrences per item (popularity for the sampler and logQ), zero for unseen."""
    a = SessionArrays(np.array([0, 3, 4, 6]), np.array([2, 0, 2, 2, 5, 0]))
    c = item_counts(a, 7)
    assert c.dtype == np.int64 and c.tolist() == [2, 0, 3, 0, 0, 1, 0]
    assert item_counts(SessionArrays(np.zeros(1), np.zeros(0)), 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="out of range"):
        item_counts(a, 5)

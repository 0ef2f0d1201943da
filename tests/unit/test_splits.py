"""Property tests of the splits: no time leaks, no session in two splits, items known."""

from __future__ import annotations

import filecmp
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayrec.platform.config import load_config
from rayrec.platform.preprocessing import steps
from rayrec.platform.preprocessing.config import PreprocessJobConfig
from rayrec.platform.preprocessing.pipeline import run_preprocess
from rayrec.platform.preprocessing.synthetic import generate_events, write_user_csv

SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))


def _read_split(out: Path, name: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((out / name).glob("*.parquet"))])


def _preprocess(tmp: Path, n: int, seed: int, *extra: str) -> Path:
    df = generate_events(n, n_items=300, seed=seed, days=10)
    src = write_user_csv(df, tmp / f"ev{seed}.csv")
    out = tmp / f"out{seed}"
    cfg = load_config(
        PreprocessJobConfig, None,
        ["source.format=csv", f"source.path={src}", "source.column_map={user_id: user_id, item_id: item_id, ts: ts}",
         f"output.path={out}", "ray.use_ray=false", *extra],
    )
    run_preprocess(cfg, log=lambda _m: None)
    return out


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1_500, 3_000), test_days=st.sampled_from([1, 2, 3]))
def test_session_time_split_properties(tmp_path_factory, seed, n, test_days):
    out = _preprocess(tmp_path_factory.mktemp("s"), n, seed, f"split.test_days={test_days}")
    train, test = _read_split(out, "train_full"), _read_split(out, "test")
    tr, va = _read_split(out, "train_tr"), _read_split(out, "train_valid")
    # no session in two splits
    assert not set(train["session_id"]) & set(test["session_id"])
    assert not set(tr["session_id"]) & set(va["session_id"])
    # whole sessions by end time: every training session ends before any test session ends
    if len(test):
        assert train.groupby("session_id")["ts"].max().max() < test.groupby("session_id")["ts"].max().min()
        # test items are a subset of training items, test sessions have >= 2 events
        assert set(test["item_id"]) <= set(train["item_id"])
        assert test.groupby("session_id").size().min() >= 2
    assert set(va["item_id"]) <= set(tr["item_id"])
    # the item index is dense and ordered by training popularity
    items = pd.read_parquet(out / "items.parquet")
    assert items["item_idx"].tolist() == list(range(len(items)))
    assert (np.diff(items["count"].to_numpy()) <= 0).all()
    assert set(items["item_id"]) == set(train["item_id"])


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_date_windows_do_not_leak(tmp_path_factory, seed):
    d0 = date(2014, 4, 1)
    out = _preprocess(
        tmp_path_factory.mktemp("d"), 4000, seed, "split.name=date_windows",
        f"split.dx={d0}", f"split.dxy={d0 + timedelta(days=5)}", f"split.dyz={d0 + timedelta(days=7)}",
        f"split.dz={d0 + timedelta(days=10)}", "split.valid_shift_days=2", "filter.min_session_length=1",
    )
    tx, ty = _read_split(out, "train_x"), _read_split(out, "train_y")
    ex, ez = _read_split(out, "test_x"), _read_split(out, "test_y")
    assert len(tx) and len(ty) and len(ex) and len(ez)
    assert tx["ts"].max() < ty["ts"].min()
    assert ex["ts"].max() < ez["ts"].min()
    assert set(ty["user_id"]) <= set(tx["user_id"]) and set(ez["user_id"]) <= set(ex["user_id"])
    vx, vz = _read_split(out, "valid_test_x"), _read_split(out, "valid_test_y")
    utc = "UTC"
    lo, hi = pd.Timestamp(d0 + timedelta(days=5), tz=utc), pd.Timestamp(d0 + timedelta(days=8), tz=utc)
    assert vz["ts"].min() >= lo and vz["ts"].max() < hi  # [dyz, dz) shifted back 2 days
    assert vx["ts"].max() < vz["ts"].min()


@SETTINGS
@given(seed=st.integers(0, 10_000), n_targets=st.integers(1, 2))
def test_user_holdout_targets_are_last_events(tmp_path_factory, seed, n_targets):
    out = _preprocess(
        tmp_path_factory.mktemp("u"), 4000, seed, "split.name=user_holdout", f"split.n_targets={n_targets}",
        "split.holdout_test_fraction=0.2", "filter.min_session_length=1",
    )
    train = _read_split(out, "train")
    for name in ("valid", "test"):
        inp, tgt = _read_split(out, f"{name}_input"), _read_split(out, f"{name}_target")
        assert not set(inp["user_id"]) & set(train["user_id"])
        assert set(tgt["user_id"]) == set(inp["user_id"])
        assert (tgt.groupby("user_id").size() == n_targets).all()
        last_in = inp.groupby("user_id")["ts"].max()
        first_t = tgt.groupby("user_id")["ts"].min()
        assert (last_in <= first_t.loc[last_in.index]).all()


def test_same_input_same_bytes(tmp_path):
    a = _preprocess(tmp_path / "a", 3000, 7)
    b = _preprocess(tmp_path / "b", 3000, 7)
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file() and p.name != "timings.json")
    assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and p.name != "timings.json")
    for n in names:
        if n == "manifest.json":  # paths differ between a and b; compare without them
            ta = (a / n).read_text().replace(str(tmp_path / "a"), "X")
            tb = (b / n).read_text().replace(str(tmp_path / "b"), "X")
            assert ta == tb
        else:
            assert filecmp.cmp(a / n, b / n, shallow=False), n


def test_sessionize_splits_on_gap_per_user():
    df = pd.DataFrame(
        {
            "user_id": pd.array(["a", "a", "a", "b", "a"], dtype="string"),
            "session_id": pd.array([None] * 5, dtype="string"),
            "item_id": pd.array(["1", "2", "3", "4", "5"], dtype="string"),
            "ts": np.array([0, 60_000, 10_000_000, 5, 10_060_000], dtype=np.int64),
            "source_row": np.arange(5),
        }
    )
    out = steps.sessionize(df, gap_seconds=1800).sort_values("item_id")
    assert out["session_id"].tolist() == ["a:0", "a:0", "a:1", "b:0", "a:1"]


def test_filters_fixed_point_reported():
    # item z occurs 2x: removing it shortens session s2 to 1 event, which a 2nd round removes
    df = pd.DataFrame(
        {
            "user_id": pd.array(["u"] * 9, dtype="string"),
            "session_id": pd.array(["s1"] * 3 + ["s2"] * 2 + ["s3"] * 4, dtype="string"),
            "item_id": pd.array(["x", "y", "z", "x", "z", "x", "y", "x", "y"], dtype="string"),
            "ts": np.arange(9, dtype=np.int64),
        }
    )
    one, rep1 = steps.apply_filters(df, min_session_length=2, min_item_support=3, max_rounds=1)
    full, rep0 = steps.apply_filters(df, min_session_length=2, min_item_support=3, max_rounds=0)
    assert rep0.fixed_point and rep0.rounds >= 2
    assert len(full) <= len(one)
    assert full.groupby("session_id").size().min() >= 2
    assert full["item_id"].value_counts().min() >= 3

"""Preprocessing on a real local Ray, on the public datasets of ../shared/data."""

from __future__ import annotations

import filecmp
import json

import pandas as pd

from rayrec.platform.config import load_config
from rayrec.platform.preprocessing.config import PreprocessJobConfig
from rayrec.platform.preprocessing.pipeline import run_preprocess
from tests.conftest import REPO, data_path


def _cfg(*overrides, config=None):
    return load_config(PreprocessJobConfig, config, list(overrides))


def test_rsc15_published_counts_through_ray(ray_session, tmp_path):
    data_path("rsc15-100k")
    import os

    os.chdir(REPO)  # the shipped config uses paths relative to the repo root
    cfg = _cfg(f"output.path={tmp_path / 'rsc'}", "ray.use_ray=true", config=REPO / "jobs/configs/preprocess_rsc15.yaml")
    m = run_preprocess(cfg, log=lambda _m: None)
    s = m["split"]["splits"]
    # published: train_full 70,278 events / 17,794 sessions / 2,933 items; one line of
    # the published file is an exact duplicate of its predecessor (session 29242), which
    # validation quarantines by design
    assert m["counts"]["quarantine"]["by_reason"] == {"exact duplicate": 2}  # train_full + train_tr copy
    assert s["train_full"]["events"] + 1 == 70_278
    assert s["train_full"]["sessions"] == 17_794 and s["train_full"]["items"] == 2_933
    assert s["test"]["events"] == 13_568 and s["test"]["sessions"] == 3_416
    assert m["items"]["n_items"] == 2_933


def test_ray_and_single_process_give_identical_bytes(ray_session, tmp_path):
    from rayrec.platform.preprocessing.synthetic import generate_events, write_user_csv

    src = write_user_csv(generate_events(20_000, n_items=500, seed=3), tmp_path / "ev.csv")
    outs = []
    for use_ray in (True, False, True):
        out = tmp_path / f"out_{len(outs)}"
        cfg = _cfg(
            "source.format=csv", f"source.path={src}", "source.column_map={user_id: user_id, item_id: item_id, ts: ts}",
            f"output.path={out}", f"ray.use_ray={use_ray}", "ray.partitions=4",
        )
        run_preprocess(cfg, log=lambda _m: None)
        outs.append(out)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*.parquet"))
    assert len(files) >= 5
    for other in outs[1:]:
        for f in files:
            assert filecmp.cmp(outs[0] / f, other / f, shallow=False), f
        m0 = json.loads((outs[0] / "manifest.json").read_text())
        m1 = json.loads((other / "manifest.json").read_text())
        assert m0["counts"] == m1["counts"] and m0["split"]["splits"] == m1["split"]["splits"]


def test_movielens_counts_and_metadata(tmp_path):
    from rayrec.platform.preprocessing.readers import read_movielens_items, read_movielens_users

    d = data_path("ml-100k")
    cfg = _cfg("source.format=movielens", f"source.path={d / 'u.data'}", f"output.path={tmp_path / 'o'}",
               "ray.use_ray=false", "filter.min_item_support=1", "filter.min_session_length=1",
               "split.name=user_holdout")
    m = run_preprocess(cfg, log=lambda _m: None)
    assert m["counts"]["read"]["rows"] == 100_000 and m["counts"]["quarantine"]["total"] == 0
    allrows = pd.concat(
        pd.read_parquet(tmp_path / "o" / n) for n in ("train", "valid_input", "valid_target", "test_input", "test_target")
    )
    # held-out users' ratings of items no training user rated are removed and counted
    removed = sum(m["counts"]["removed_after_split"].values())
    assert 0 < removed < 200
    assert len(allrows) + removed == 100_000
    assert allrows["user_id"].nunique() == 943
    items = read_movielens_items(d / "u.item")
    users = read_movielens_users(d / "u.user")
    assert len(items) == 1_682 and len(users) == 943
    assert items.loc[items["item_id"] == "1", "category"].item() == "Animation|Children's|Comedy"


def test_diginetica_and_categories(tmp_path):
    from rayrec.platform.preprocessing.readers import read_diginetica_categories, read_source

    d = data_path("diginetica-sample")
    rf = read_source("diginetica", d / "sample_train-item-views.csv")
    assert len(rf.frame) == 12_391 and rf.rejects.empty
    assert rf.frame["session_id"].nunique() == 2_986 and rf.frame["item_id"].nunique() == 7_139
    assert rf.frame["user_id"].isna().mean() > 0.5  # NA users are anonymous, not errors
    cats = read_diginetica_categories(d / "product-categories.csv")
    assert len(cats) == 184_047 and cats["category"].nunique() == 1_217
    assert set(rf.frame["item_id"]) <= set(cats["item_id"])


def test_lastfm_every_line_accounted(tmp_path):
    d = data_path("lastfm-2k")
    cfg = _cfg("source.format=lastfm", f"source.path={d / 'user_taggedartists.dat'}", f"output.path={tmp_path / 'o'}",
               "ray.use_ray=false", "split.name=user_holdout", "filter.min_session_length=1", "filter.min_item_support=1")
    m = run_preprocess(cfg, log=lambda _m: None)
    r = m["counts"]["read"]
    assert r["lines"] == 186_479 == r["rows"] + r["folded_tag_lines"] + r["malformed_lines"]
    assert m["counts"]["quarantine"]["total"] <= 10  # a handful of pre-1990 dates

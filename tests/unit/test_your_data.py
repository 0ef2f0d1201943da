"""Your own data (issue 15 findings 1, 8, 2): the generic CSV reader's column map, timestamp
ties, a stable item index, warm start (``train.init_from``) and several sources with dedupe."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rayrec.platform.config import ConfigError, load_config
from rayrec.platform.preprocessing.config import PreprocessJobConfig
from rayrec.platform.preprocessing.pipeline import run_preprocess
from rayrec.platform.preprocessing.readers import ReaderError, read_source

DAY = 86_400


def make_csv(path, n_users=40, n_items=30, days=12, seed=0, day_granular=False, start_user=0):
    """``user,item,rating,timestamp`` (the Amazon/MovieLens shape): per user 6-12 events;
    ``day_granular`` puts every event at midnight (ties on (user, ts))."""
    rng = np.random.default_rng(seed)
    rows = []
    t0 = 1_700_000_000 - 1_700_000_000 % DAY
    for u in range(start_user, start_user + n_users):
        n = int(rng.integers(6, 13))
        ts = np.sort(rng.integers(0, days * DAY, n)) + t0
        if day_granular:
            ts = ts - ts % DAY
        items = rng.zipf(1.5, n) % n_items
        for t, i in zip(ts, items):
            rows.append((f"u{u}", f"i{i:03d}", int(rng.integers(1, 6)), int(t)))
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    df.to_csv(path, index=False)
    return df


PER_USER = ["source.format=csv", "source.column_map={user_id: user, session_id: user, item_id: item, "
            "ts: timestamp, value: rating}", "filter.min_item_support=1", "filter.min_session_length=2",
            "split.test_days=2", "split.valid_days=null", "ray.use_ray=false"]


def _pre(tmp_path, csv, *extra, out="out", log=None):
    cfg = load_config(PreprocessJobConfig, None,
                      [f"source.path={csv}", f"output.path={tmp_path / out}", *PER_USER, *extra])
    return run_preprocess(cfg, log=log or (lambda _m: None)), tmp_path / out


# ---- finding 1: the column map ---------------------------------------------------------


def test_one_sequence_per_user_maps_one_column_twice(tmp_path):
    csv = tmp_path / "r.csv"
    df = make_csv(csv)
    rf = read_source("csv", csv, column_map={"user_id": "user", "session_id": "user", "item_id": "item",
                                              "ts": "timestamp"})
    assert (rf.frame["user_id"] == rf.frame["session_id"]).all() and len(rf.frame) == len(df)
    m, out = _pre(tmp_path, csv)
    train = pd.read_parquet(out / "train_full")
    # one sequence per user: the session is the user
    assert (train["session_id"] == train["user_id"]).all()
    assert m["split"]["splits"]["train_full"]["sessions"] == train["user_id"].nunique()


def test_sessions_by_gap_when_only_user_is_mapped(tmp_path):
    csv = tmp_path / "r.csv"
    make_csv(csv, days=30)
    m, out = _pre(tmp_path, csv, "source.column_map={user_id: user, item_id: item, ts: timestamp}",
                  "sessionize.gap_minutes=1440", "filter.min_session_length=1")
    train = pd.read_parquet(out / "train_full")
    assert train["session_id"].str.contains(":").all()  # "<user>:<k>" from the gap
    assert train["session_id"].nunique() > train["user_id"].nunique()


def test_column_map_errors_list_names_and_file_columns_before_ray(tmp_path, capsys, monkeypatch):
    from rayrec.jobs import preprocess
    from rayrec.platform import runtime

    started: list[bool] = []  # the job's Ray start-up (a Ray of another test may already be up)
    monkeypatch.setattr(runtime, "init_ray", lambda *a, **k: started.append(True))

    csv = tmp_path / "r.csv"
    make_csv(csv)
    base = [f"source.path={csv}", "source.format=csv", f"output.path={tmp_path / 'o'}", "ray.use_ray=true"]
    # a map naming a column the file lacks: exit 1 before Ray starts, file's columns listed
    rc = preprocess.main([*base, "source.column_map={user_id: user, item_id: item_id, ts: timestamp}"])
    err = capsys.readouterr().err
    assert rc == 1 and not started
    assert "'item_id' (for item_id)" in err and "['user', 'item', 'rating', 'timestamp']" in err
    assert "user_id, session_id, item_id, ts, event, value" in err
    # no map at all: a config error (exit 2) naming the required and allowed canonical names
    with pytest.raises(SystemExit) as exc:
        preprocess.main(base)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and not started
    assert "source.column_map: missing item_id, ts, user_id or session_id" in err
    assert "allowed canonical names: user_id, session_id, item_id, ts, event, value" in err
    with pytest.raises(ConfigError, match=r"unknown canonical column\(s\) \['uid'\]"):
        load_config(PreprocessJobConfig, None, [*base, "source.column_map={uid: user, item_id: item, ts: timestamp}"])
    with pytest.raises(ReaderError, match="allowed canonical names"):
        read_source("csv", csv, column_map={"user_id": "user", "item_id": "item"})


# ---- finding 8: timestamp ties ------------------------------------------------------------


def _tie_csv(tmp_path):
    """Two users, all events of a user on one day, file order = z, y, x (reverse of item id)."""
    t = 1_700_006_400 - 1_700_006_400 % DAY
    lines = ["user,item,rating,timestamp"]
    for u in ("a", "b"):
        for k, item in enumerate(("z", "y", "x", "w")):
            lines.append(f"{u},{item},5,{t + (DAY if k == 3 else 0)}")
    for u in range(20):  # tie-free users so the split has a train part
        for k in range(4):
            lines.append(f"c{u},{'wxyz'[k]},5,{t + k * 3600}")
    p = tmp_path / "ties.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def _order(out, user):
    parts = [pd.read_parquet(out / s) for s in ("train_full", "test") if (out / s).exists()]
    df = pd.concat(parts)
    return df.loc[df["user_id"] == user, "item_id"].tolist()


def test_ts_ties_options_and_warning_count(tmp_path):
    csv = _tie_csv(tmp_path)
    logs: list[str] = []
    m, out = _pre(tmp_path, csv, "split.test_days=0.01", "sessionize.ties_warn_fraction=0.04", out="by_item",
                  log=logs.append)
    assert _order(out, "a") == ["x", "y", "z", "w"]  # by_item (the default): ties by item id
    ties = m["counts"]["ts_ties"]
    assert ties["events"] == 4 and ties["policy"] == "by_item" and ties["warned"]
    assert ties["fraction"] == pytest.approx(4 / 88, abs=1e-6)
    assert any(line.startswith("WARNING: 4 of 88 events") for line in logs)
    m2, out2 = _pre(tmp_path, csv, "split.test_days=0.01", "sessionize.ts_ties=keep_file_order", out="file")
    assert _order(out2, "a") == ["z", "y", "x", "w"]  # the file's order
    logs.clear()
    m3, _ = _pre(tmp_path, csv, "split.test_days=0.01", out="q", log=logs.append)  # 4.5% < 5% default
    assert not m3["counts"]["ts_ties"]["warned"] and not any("WARNING" in line for line in logs)
    with pytest.raises(ValueError, match=r"ts_ties=error: 4 of 88 events .* rows 2 and 3 \(session a"):
        _pre(tmp_path, csv, "split.test_days=0.01", "sessionize.ts_ties=error", out="e")


# ---- finding 2: stable item index, warm start, several sources ------------------------------


def test_appending_events_of_known_items_keeps_every_item_idx(tmp_path):
    csv = tmp_path / "day1.csv"
    df = make_csv(csv)
    _pre(tmp_path, csv, out="d1")
    old = pd.read_parquet(tmp_path / "d1" / "items.parquet")
    # 30 more events of existing items, all of the least popular ones (popularity order moves)
    rare = old.sort_values("item_idx")["item_id"].tolist()[-3:]
    t = int(df["timestamp"].max())
    extra = pd.DataFrame({"user": [f"u{k % 7}" for k in range(30)], "item": [rare[k % 3] for k in range(30)],
                          "rating": 5, "timestamp": [t - 5 * DAY + k for k in range(30)]})
    csv2 = tmp_path / "day2.csv"
    pd.concat([df, extra]).to_csv(csv2, index=False)
    _pre(tmp_path, csv2, out="plain")  # without the option the index is rebuilt by popularity
    plain = pd.read_parquet(tmp_path / "plain" / "items.parquet")
    moved = old.merge(plain, on="item_id")
    assert (moved["item_idx_x"] != moved["item_idx_y"]).any()
    m, out = _pre(tmp_path, csv2, f"output.item_index_from={tmp_path / 'd1'}", out="d2")
    new = pd.read_parquet(out / "items.parquet")
    assert new["item_id"].tolist()[: len(old)] == old["item_id"].tolist()
    assert new["item_idx"].tolist() == list(range(len(new)))
    assert m["items"]["index_from"] == {"from": str(tmp_path / "d1"), "kept": len(old), "appended": 0}
    # the data's item_idx follow the kept index
    tr = pd.read_parquet(out / "train_full")
    assert (tr["item_idx"].to_numpy() == tr["item_id"].map(dict(zip(new["item_id"], new["item_idx"])))).all()


def test_new_items_are_appended_after_the_old_ones(tmp_path):
    csv = tmp_path / "day1.csv"
    df = make_csv(csv)
    _pre(tmp_path, csv, out="d1")
    old = pd.read_parquet(tmp_path / "d1" / "items.parquet")
    t = int(df["timestamp"].min())
    extra = pd.DataFrame({"user": [f"n{k // 4}" for k in range(24)],
                          "item": ["new_b"] * 16 + ["new_a"] * 8, "rating": 5,
                          "timestamp": [t + k * 60 for k in range(24)]})
    csv2 = tmp_path / "day2.csv"
    pd.concat([df, extra]).to_csv(csv2, index=False)
    # re-run into the same output directory: the previous index is read before it is replaced
    m, out = _pre(tmp_path, csv2, f"output.item_index_from={tmp_path / 'd1' / 'items.parquet'}", out="d1")
    new = pd.read_parquet(out / "items.parquet")
    assert new["item_id"].tolist() == old["item_id"].tolist() + ["new_b", "new_a"]  # by popularity
    assert m["items"]["index_from"]["appended"] == 2


def _train_cfg(root, tmp_path, name, *extra):
    from rayrec.platform.training.config import TrainJobConfig

    return load_config(TrainJobConfig, None, [
        "model.name=gru4rec", "model.layers=[16]", "model.loss.n_sample=8", f"data.path={root}",
        "data.train_split=train_full", "data.valid_split=test", "ray.use_ray=false", "train.epochs=1",
        "train.batch_size=8", f"run.storage_path={tmp_path / 'runs'}", f"run.name={name}", *extra])


def test_init_from_copies_known_rows_by_id_and_trains(tmp_path):
    from rayrec.models.gru4rec import GRU4Rec, GRU4RecConfig
    from rayrec.platform.checkpoint import load_checkpoint
    from rayrec.platform.training.families import TrainingInputError
    from rayrec.platform.training.trainer import fit
    from rayrec.platform.training.warm_start import WarmStartError, warm_start_state

    # the pure copy: rows by item id, new rows fresh, other tensors whole, shape errors named
    cfg = GRU4RecConfig(name="gru4rec", layers=[4])
    old, fresh = GRU4Rec(cfg, 3).state_dict(), GRU4Rec(cfg, 4).state_dict()
    st, rep = warm_start_state(fresh, old, ["a", "b", "c"], ["c", "a", "new", "b"], {"Wy": 0, "By": 0})
    assert torch.equal(st["Wy"][[0, 1, 3]], old["Wy"][[2, 0, 1]]) and torch.equal(st["Wy"][2], fresh["Wy"][2])
    assert torch.equal(st["Wrz.0"], old["Wrz.0"]) and (rep.known_items, rep.new_items) == (3, 1)
    wide = GRU4Rec(GRU4RecConfig(name="gru4rec", layers=[5]), 4).state_dict()
    with pytest.raises(WarmStartError, match="item table Wy has shape"):
        warm_start_state(wide, old, ["a", "b", "c"], ["c", "a", "new", "b"], {"Wy": 0, "By": 0})
    with pytest.raises(WarmStartError, match=r"parameter Wrz.0 has shape \(4, 6\) in the checkpoint"):
        warm_start_state(fresh, {**old, "Wrz.0": torch.zeros(4, 6)}, ["a", "b", "c"], ["c", "a", "new", "b"],
                         {"Wy": 0, "By": 0})
    with pytest.raises(WarmStartError, match="not in the checkpoint: Wh.0"):
        warm_start_state(fresh, {k: v for k, v in old.items() if k != "Wh.0"}, ["a"], ["a"], {"Wy": 0})

    # through the job: day-1 model, day-2 data with new items (stable index), warm start
    csv = tmp_path / "day1.csv"
    df = make_csv(csv)
    _pre(tmp_path, csv, out="d1")
    r1 = fit(_train_cfg(tmp_path / "d1", tmp_path, "day1"), log=lambda _m: None)
    more = make_csv(tmp_path / "more.csv", n_users=15, n_items=40, seed=3, start_user=100)
    more["item"] = more["item"].str.replace("i0", "j0")  # unseen item ids
    csv2 = tmp_path / "day2.csv"
    pd.concat([df, more]).to_csv(csv2, index=False)
    _pre(tmp_path, csv2, f"output.item_index_from={tmp_path / 'd1'}", out="d2")
    with pytest.raises(TrainingInputError, match="set train.init_from="):  # same run.name: mismatch + hint
        fit(_train_cfg(tmp_path / "d2", tmp_path, "day1"), log=lambda _m: None)
    logs: list[str] = []
    r2 = fit(_train_cfg(tmp_path / "d2", tmp_path, "day2", f"train.init_from={tmp_path / 'runs' / 'day1'}",
                        "optim.lr=1e-12", "optim.momentum=0.0"), log=logs.append)
    ck1, ck2 = load_checkpoint(r1.checkpoint_dir), load_checkpoint(r2.checkpoint_dir)
    n_old = len(ck1.item_ids)
    assert ck2.item_ids[:n_old] == ck1.item_ids and len(ck2.item_ids) > n_old
    # lr ~0: the trained weights are the initial ones, so the copy is visible
    assert torch.allclose(ck2.model_state["Wy"][:n_old], ck1.model_state["Wy"], atol=1e-9)
    assert not torch.equal(ck2.model_state["Wy"][n_old:], torch.zeros_like(ck2.model_state["Wy"][n_old:]))
    assert torch.allclose(ck2.model_state["Wh.0"], ck1.model_state["Wh.0"], atol=1e-9)
    assert any(f"{n_old} known items copied by id" in line for line in logs)
    assert any("optimiser state of" in line and "item tables by item id" in line for line in logs)
    assert json.loads((tmp_path / "runs" / "day2").joinpath(
        r2.checkpoint_dir.split("/")[-1], "meta.json").read_text())["init_from"].endswith("day1")
    r3 = fit(_train_cfg(tmp_path / "d2", tmp_path, "day2b", f"train.init_from={r1.checkpoint_dir}"),
             log=lambda _m: None)  # and it trains
    assert np.isfinite(r3.metrics["loss"]) and r3.metrics["recall@20"] >= 0
    assert not torch.equal(load_checkpoint(r3.checkpoint_dir).model_state["Wh.0"], ck1.model_state["Wh.0"])


def test_init_from_carries_the_optimiser_state_item_rows_by_id():
    """Without the old accumulators a warm start's first Adagrad step moves every coordinate
    by about lr (g / sqrt(g^2)): the known rows' state is copied by item id, new rows start
    empty, other tensors whole."""
    from rayrec.platform.training.optim import AdagradMomentum
    from rayrec.platform.training.warm_start import WarmStartError, warm_start_optimizer

    old_w, old_b = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))
    opt = AdagradMomentum([old_w, old_b], lr=0.1, momentum=0.5)
    for _ in range(3):
        opt.zero_grad()
        ((old_w * torch.arange(1.0, 7.0).view(3, 2)).sum() + (old_b ** 2).sum()).backward()
        opt.step()
    new_w, new_b = torch.nn.Parameter(torch.zeros(4, 2)), torch.nn.Parameter(torch.zeros(4))
    opt2 = AdagradMomentum([new_w, new_b], lr=0.1, momentum=0.5)
    new_idx, old_idx = torch.tensor([0, 1, 3]), torch.tensor([2, 0, 1])  # data: c, a, new, b
    assert warm_start_optimizer(opt2, opt.state_dict(), {id(new_w): (0, new_idx, old_idx)}) == 2
    for key in ("acc", "mom"):
        a_old, a_new = opt.state[old_w][key], opt2.state[new_w][key]
        assert torch.equal(a_new[[0, 1, 3]], a_old[[2, 0, 1]]) and torch.equal(a_new[2], torch.zeros(2))
        assert torch.equal(opt2.state[new_b][key], opt.state[old_b][key])
    # the next step (eq. A) continues the old accumulators and velocities; the new row starts fresh
    acc, mom = opt2.state[new_w]["acc"].clone(), opt2.state[new_w]["mom"].clone()
    new_w.grad = torch.ones(4, 2)
    before = new_w.detach().clone()
    opt2.step()
    expect = 0.5 * mom - 0.1 / torch.sqrt(acc + 1.0 + 1e-6)
    torch.testing.assert_close(new_w.detach() - before, expect)
    assert torch.allclose(expect[2], torch.full((2,), -0.1), atol=1e-6)  # fresh row: a full lr step
    assert (expect[[0, 1, 3]] - 0.5 * mom[[0, 1, 3]]).abs().max() < 0.1 / 1.5  # known rows: smaller
    with pytest.raises(WarmStartError, match="optimiser holds 2 parameters, this run's 1"):
        warm_start_optimizer(AdagradMomentum([new_w]), opt.state_dict(), {})


def test_two_sources_overlapping_events_are_deduped_with_counts(tmp_path):
    df = make_csv(tmp_path / "all.csv", n_users=50)
    history, log = df.iloc[: int(len(df) * 0.7)], df.iloc[int(len(df) * 0.5):]
    overlap = len(df.iloc[int(len(df) * 0.5): int(len(df) * 0.7)])
    history.to_csv(tmp_path / "history.csv", index=False)
    # the Serve event log's layout: canonical column names, ts in unix ms, event ids
    ev = pd.DataFrame({"user_id": log["user"], "session_id": log["user"], "item_id": log["item"],
                       "ts": log["timestamp"] * 1000, "event": "interaction", "value": log["rating"].astype(float),
                       "event_id": [f"e{k}" for k in range(len(log))]})
    ev.to_csv(tmp_path / "events-20240101-host-1-0000.csv", index=False)
    src = ("source=[{format: csv, path: %s, column_map: {user_id: user, session_id: user, item_id: item, "
           "ts: timestamp, value: rating}}, {format: csv, path: %s, ts_format: unix_ms, column_map: "
           "{user_id: user_id, session_id: session_id, item_id: item_id, ts: ts, value: value}}]"
           % (tmp_path / "history.csv", tmp_path / "events-20240101-host-1-0000.csv"))
    cfg = load_config(PreprocessJobConfig, None, [src, f"output.path={tmp_path / 'm'}", *PER_USER[2:]])
    m = run_preprocess(cfg, log=lambda _m: None)
    assert overlap > 0
    assert m["counts"]["dedupe"] == {"exact_duplicates": 0, "across_sources": overlap, "sources": 2}
    assert m["counts"]["read"]["rows"] == len(history) + len(log)
    single, _ = _pre(tmp_path, tmp_path / "all.csv", out="single")
    assert m["split"]["splits"] == single["split"]["splits"]  # the merge is the whole log, once
    q = pd.read_parquet(tmp_path / "m" / "quarantine.parquet")
    assert (q["reason"] == "duplicate across sources").sum() == overlap
    assert set(q["source_file"]) == {str(tmp_path / "events-20240101-host-1-0000.csv")}


def test_init_from_is_generic_over_the_model_contract():
    """The daily model (tensor-parallel layout) warm-starts through the same contract."""
    from rayrec.models.daily_nn import DailyNN, DailyNNConfig, DailyNNTask
    from rayrec.platform.training.warm_start import item_state_dims, warm_start_state

    cfg = DailyNNConfig()
    old, fresh = DailyNN(5, cfg, seed=0), DailyNN(7, cfg, seed=1)
    task = DailyNNTask.__new__(DailyNNTask)
    dims = item_state_dims(task, fresh)
    assert dims == {"input_layer.weight": 0, "output_layer.weight": 0, "output_layer.bias": 0}
    old_ids, new_ids = ["p0", "p1", "p2", "p3", "p4"], ["p4", "x", "p0", "p1", "y", "p2", "p3"]
    st, rep = warm_start_state(fresh.state_dict(), old.state_dict(), old_ids, new_ids, dims)
    o = old.state_dict()
    for key in dims:
        assert torch.equal(st[key][[0, 2, 3, 5, 6]], o[key][[4, 0, 1, 2, 3]])
        assert torch.equal(st[key][[1, 4]], fresh.state_dict()[key][[1, 4]])
    assert (rep.known_items, rep.new_items) == (5, 2) and rep.copied_tensors
    fresh.load_state_dict(st)  # loads strictly


def test_daily_job_reads_several_sources_once(tmp_path):
    """The daily job merges its history with later event logs (finding 2): an event in both is
    counted once; one source or two overlapping halves give the same purchases."""
    from rayrec.jobs.daily import _read_events
    from rayrec.platform.daily.config import DailyJobConfig

    df = make_csv(tmp_path / "all.csv", n_users=30)
    df.iloc[: int(len(df) * 0.7)].to_csv(tmp_path / "history.csv", index=False)
    df.iloc[int(len(df) * 0.4):].to_csv(tmp_path / "later.csv", index=False)
    cmap = {"user_id": "user", "item_id": "item", "ts": "timestamp", "value": "rating"}

    def cfg(*paths):
        srcs = [{"format": "csv", "path": str(tmp_path / p), "column_map": cmap} for p in paths]
        return DailyJobConfig.model_validate({"source": srcs[0] if len(srcs) == 1 else srcs,
                                              "ray": {"use_ray": False}})

    one, _ = _read_events(cfg("all.csv"))
    two, _ = _read_events(cfg("history.csv", "later.csv"))
    key = ["user_id", "item_id", "ts_ms"]
    assert len(two) == len(one.drop_duplicates(key))
    pd.testing.assert_frame_equal(two.sort_values(key).reset_index(drop=True),
                                  one.drop_duplicates(key).sort_values(key).reset_index(drop=True))
    with pytest.raises(ValueError, match=r"source\[1\].path is required"):
        DailyJobConfig.model_validate({"source": [{"format": "csv", "path": str(tmp_path / "all.csv"),
                                                   "column_map": cmap},
                                                  {"format": "csv", "paths": {"train": "x"}, "column_map": cmap}]})

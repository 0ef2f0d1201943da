"""The daily pipeline without Ray: data -> CSR windows, the sharded model, fit_daily in
process, the daily job (preprocess -> train -> evaluate -> predict -> publish) and its bad
inputs.  Data: a small MovieLens-format file generated here (fast and deterministic)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rayrec.jobs import daily as daily_job
from rayrec.models.daily_nn import DailyNN, DailyNNConfig, SparseBatch

from rayrec.platform.config import ConfigError, load_config
from rayrec.platform.daily.config import (
    DailyJobConfig,
    DailyTrainJobConfig,
    PredictConfig,
    WindowConfig,
)
from rayrec.platform.daily.data import (
    DailyDataError,
    build_catalog,
    build_windows,
    day_ms,
    load_catalog,
    load_windows,
)
from rayrec.platform.daily.evaluate import item_knn_scores, plot_decay, pop_scores
from rayrec.platform.daily.predict import TopKScorer, batch_predict, model_version_of, user_rows
from rayrec.platform.daily.trainer import ShardedDailyNN, fit_daily, load_daily_model, local_batch
from rayrec.platform.store import SQLiteRecommendationStore

T0 = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def _ts(day: float) -> pd.Timestamp:
    return pd.Timestamp(T0 + dt.timedelta(days=day))


@pytest.fixture(scope="module")
def udata(tmp_path_factory) -> Path:
    """60 users x 30 items over 120 days, MovieLens ``u.data`` layout, taste clusters."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        group = u % 3
        for _ in range(14):
            item = int(group * 10 + rng.integers(0, 10))
            day = float(rng.uniform(0, 120))
            rating = int(rng.choice([2, 4, 5], p=[0.15, 0.45, 0.4]))
            rows.append((u + 1, item + 1, rating, int((T0 + dt.timedelta(days=day)).timestamp())))
    p = tmp_path_factory.mktemp("ml") / "u.data"
    p.write_text("".join(f"{a}\t{b}\t{c}\t{d}\n" for a, b, c, d in rows))
    return p


def _job_cfg(udata: Path, tmp: Path, **over) -> DailyJobConfig:
    data = {
        "source": {"format": "movielens", "path": str(udata), "event": "purchase"},
        "filter": {"value_above": 3, "min_session_length": 1, "min_item_support": 2},
        "window": {"input_days": 730, "output_days": 20, "test_days": 20, "valid_shift_days": 10},
        "work_dir": str(tmp / "work"),
        "train": {
            "model": {"variant": "soft_split", "decay": "learned", "hidden_sizes": [16, 8], "dropout": 0.0},
            "optim": {"lr": 0.01},
            "train": {"epochs": 2, "batch_size": 16},
        },
        "predict": {"k": 5, "use_ray": False},
        "store": {"path": str(tmp / "recs.sqlite"), "keep_versions": 3},
    }
    data.update(over)
    return DailyJobConfig.model_validate(data)


# ---------------------------------------------------------------------------------------
# data -> CSR windows
# ---------------------------------------------------------------------------------------


def _frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_idx", "ts"])


def test_windows_days_ago_dedup_and_users_without_input():
    items = pd.DataFrame({"item_idx": [0, 1, 2], "item_id": ["a", "b", "c"], "count": [5, 9, 1]})
    cat = build_catalog(items, None)
    x = _frame([("u1", 0, _ts(10)), ("u1", 0, _ts(15)), ("u1", 1, _ts(19.5)), ("u2", 2, _ts(0))])
    y = _frame([("u1", 2, _ts(21)), ("u3", 1, _ts(22)), ("u3", 1, _ts(23))])
    w = build_windows(x, y, "2020-01-21", cat)  # ref = day 20
    assert list(w.user_ids) == ["u1", "u2", "u3"]
    xl, yl = w.x_lists(), w.y_lists()
    assert [list(a) for a in xl] == [[0, 1], [2], []]  # u3: no history -> empty input row
    # repeated (u1, item 0): the most recent purchase (day 15 -> 5 days ago) is kept
    assert np.allclose(w.x_days[:2], [5.0, 0.5])
    assert w.x_days[2] == pytest.approx(20.0)
    assert [list(a) for a in yl] == [[2], [], [1]]  # Y deduplicated
    inputs, targets = w.batch([2, 0])
    assert inputs.offsets.tolist() == [0, 0, 2] and targets.item_idx.tolist() == [1, 2]


def test_catalog_clipping_keeps_top_p_and_drops_clipped_purchases():
    items = pd.DataFrame({"item_idx": [0, 1, 2], "item_id": ["a", "b", "c"], "count": [5, 9, 1]})
    cat = build_catalog(items, 2)
    assert cat.item_ids == ["b", "a"] and cat.remap.tolist() == [1, 0, -1]
    x = _frame([("u1", 2, _ts(1)), ("u1", 1, _ts(2))])
    w = build_windows(x, _frame([("u1", 2, _ts(21))]), "2020-01-21", cat)
    assert w.n_items == 2 and w.x_items.tolist() == [0] and w.y_items.tolist() == []


def test_catalog_larger_than_item_count_is_a_clear_error():
    items = pd.DataFrame({"item_idx": [0, 1], "item_id": ["a", "b"], "count": [2, 1]})
    with pytest.raises(DailyDataError, match="data.catalog_size=5 exceeds the 2 items"):
        build_catalog(items, 5)


def test_input_after_window_end_is_an_error():
    items = pd.DataFrame({"item_idx": [0], "item_id": ["a"], "count": [1]})
    with pytest.raises(DailyDataError, match="after the window end"):
        build_windows(_frame([("u", 0, _ts(30))]), None, "2020-01-21", build_catalog(items, None))


def test_window_config_rejects_wrong_order():
    with pytest.raises(ValueError, match="input_days .* must exceed window.output_days"):
        WindowConfig(input_days=5, output_days=7)


# ---------------------------------------------------------------------------------------
# the sharded model equals DailyNN
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant,decay", [("predictor", "parametric"), ("soft_split", "learned"), ("ew", "none")])
def test_sharded_model_world1_matches_daily_nn(variant, decay):
    cfg = DailyNNConfig(variant=variant, decay=decay, hidden_sizes=(6, 5), dropout=0.0, l2=1e-3,
                        sparsity_weight=0.1, ti=40.0 if decay == "parametric" else None)
    P = 13
    ours = ShardedDailyNN(P, cfg, seed=3)
    ref = DailyNN(P, cfg)
    with torch.no_grad():
        ref.input_layer.weight.copy_(ours.input_shard)
        ref.input_bias.copy_(ours.input_bias)
        ref.hidden_layer.load_state_dict(ours.hidden_layer.state_dict())
        ref.output_layer.weight.copy_(ours.output.weight.T)
        ref.output_layer.bias.copy_(ours.output.bias)
        if decay == "learned":
            ours.conv_weight.copy_(torch.linspace(1.5, 0.2, 32))
            ref.conv_weight.copy_(ours.conv_weight)
    inputs = SparseBatch.from_lists([[0, 3, 12], [], [5]], [[1.0, 30.0, 400.0], [], [0.0]])
    targets = SparseBatch.from_lists([[4], [7, 8], [5]])
    h1, h2 = ours(inputs), ref(inputs)
    torch.testing.assert_close(h1, h2)
    l1, l2 = ours.loss(h1, inputs, targets), ref.loss(h2, targets, inputs)
    torch.testing.assert_close(l1, l2)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(ours.output.weight.grad, ref.output_layer.weight.grad.T)
    torch.testing.assert_close(ours.input_shard.grad, ref.input_layer.weight.grad)


def test_block_init_is_independent_of_sharding():
    cfg = DailyNNConfig(hidden_sizes=(4, 3))
    full = ShardedDailyNN(10_000, cfg, 0, 1, seed=1)
    # a rank's shard holds exactly its rows / columns of the 1-rank initial weights
    import rayrec.platform.daily.trainer as tr

    s, e = tr.shard_range(10_000, 1, 2)
    w_in = tr._block_uniform(s, e, 4, 0.5, 1)
    assert torch.equal(w_in, full.input_shard[s:e])
    b = local_batch(SparseBatch.from_lists([[1, 6000, 9999], [5001]], [[1, 2, 3], [4]]), s, e)
    assert b.item_idx.tolist() == [6000 - s, 9999 - s, 5001 - s] and b.offsets.tolist() == [0, 2, 3]


# ---------------------------------------------------------------------------------------
# training, evaluation helpers
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def day_data(udata, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pp")
    cfg = _job_cfg(udata, tmp)
    daily_job.preprocess_for_date(cfg, dt.date(2020, 4, 20), tmp, lambda _m: None)
    return tmp / "data"


def test_fit_daily_in_process_checkpoints_every_epoch_and_resumes(day_data, tmp_path):
    cfg = load_config(DailyTrainJobConfig, None, [
        f"data.path={day_data}", "train.epochs=3", "train.batch_size=8", "optim.lr=0.01",
        "model.hidden_sizes=[16,8]", "model.decay=learned", f"run.storage_path={tmp_path}", "run.keep_checkpoints=5",
    ])
    res = fit_daily(cfg, log=lambda _m: None)
    cks = sorted(p.name for p in (tmp_path / "daily_nn").glob("checkpoint_*"))
    assert cks == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000003"]
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert "valid_precision@10" in res.metrics and 0 <= res.metrics["valid_pcc@10"] <= 1
    assert len(res.metrics["learned_decay"]) == 32
    meta = json.loads(Path(res.checkpoint_dir, "meta.json").read_text())
    assert meta["epoch"] == 3
    model, items, _ = load_daily_model(res.checkpoint_dir)
    assert model.num_items == len(items)
    # re-running the same run resumes at the end: no epoch is trained again
    again = fit_daily(cfg, log=lambda _m: None)
    assert again.history == [] and again.checkpoint_dir == res.checkpoint_dir


def test_resume_restores_adam_state_exactly_and_takes_a_new_lr(day_data, tmp_path):
    """PBT restores need the optimiser's moments: resuming from epoch 1 gives the same epoch-2
    loss as the uninterrupted run; a restored run under a new lr trains with that lr."""
    import shutil

    from rayrec.platform.checkpoint import load_checkpoint

    common = [f"data.path={day_data}", "train.batch_size=8", "optim.lr=0.01", "model.hidden_sizes=[16,8]",
              "model.decay=learned", "run.keep_checkpoints=5", "model.dropout=0.0"]
    full = fit_daily(load_config(DailyTrainJobConfig, None, [*common, "train.epochs=2",
                                                             f"run.storage_path={tmp_path / 'a'}"]),
                     log=lambda _m: None)
    ck1 = tmp_path / "a" / "daily_nn" / "checkpoint_000001"
    optim = load_checkpoint(ck1).optim_state
    assert optim is not None and optim["state"], "the checkpoint must hold Adam's moments"
    # a second run that starts from the epoch-1 checkpoint only
    (tmp_path / "b" / "daily_nn").mkdir(parents=True)
    shutil.copytree(ck1, tmp_path / "b" / "daily_nn" / "checkpoint_000001")
    resumed = fit_daily(load_config(DailyTrainJobConfig, None, [*common, "train.epochs=2",
                                                                f"run.storage_path={tmp_path / 'b'}"]),
                        log=lambda _m: None)
    assert [h["epoch"] for h in resumed.history] == [2]
    assert resumed.history[0]["train_loss"] == pytest.approx(full.history[1]["train_loss"], rel=1e-6)
    # under another lr the continuation differs (the new lr is used, not the saved one)
    (tmp_path / "c" / "daily_nn").mkdir(parents=True)
    shutil.copytree(ck1, tmp_path / "c" / "daily_nn" / "checkpoint_000001")
    other = fit_daily(load_config(DailyTrainJobConfig, None, [*common[:2], "optim.lr=0.05", *common[3:],
                                                              "train.epochs=2", f"run.storage_path={tmp_path / 'c'}"]),
                      log=lambda _m: None)
    assert other.history[0]["train_loss"] != pytest.approx(full.history[1]["train_loss"], rel=1e-6)
    lr = load_checkpoint(other.checkpoint_dir).optim_state["param_groups"][0]["lr"]
    assert lr == 0.05


def test_fit_daily_catalog_too_large(day_data, tmp_path):
    cfg = load_config(DailyTrainJobConfig, None, [f"data.path={day_data}", "data.catalog_size=100000",
                                                  f"run.storage_path={tmp_path}"])
    with pytest.raises(DailyDataError, match="catalog_size=100000 exceeds"):
        fit_daily(cfg)


def test_baselines_and_decay_plot(day_data, tmp_path):
    cat = load_catalog(str(day_data), None)
    test = load_windows(str(day_data), "test", cat)
    users = np.arange(test.n_users)
    pop = pop_scores(test)(users)
    assert pop.shape == (test.n_users, cat.size) and pop[0].argmax() == np.bincount(test.x_items).argmax()
    knn = np.asarray(item_knn_scores(test)(users))
    assert knn.shape == pop.shape and np.isfinite(knn).all()
    curve = 2.0 / (1 + ((np.arange(32) + 0.5) * 730 / 32) / 60.0)
    fit = plot_decay(curve, tmp_path / "d.png")
    assert fit["decay_days"] == pytest.approx(60.0, rel=1e-3)
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_topk_scorer_excludes_consumed_and_handles_empty_history(day_data, tmp_path):
    cfg = load_config(DailyTrainJobConfig, None, [f"data.path={day_data}", "train.epochs=1",
                                                  "model.hidden_sizes=[8,4]", f"run.storage_path={tmp_path}"])
    ck = fit_daily(cfg, log=lambda _m: None).checkpoint_dir
    scorer = TopKScorer(ck, k=5, torch_threads=None)
    batch = pd.DataFrame({"user_id": ["a", "b"], "items": [np.array([0, 1, 2]), np.array([], dtype=np.int64)],
                          "days": [np.array([1.0, 2.0, 3.0], dtype=np.float32), np.array([], dtype=np.float32)]})
    out = scorer(batch)
    ids = scorer.item_ids
    assert not set(out["rec_items"][0]) & {ids[0], ids[1], ids[2]}
    assert len(out["rec_items"][1]) == 5  # no history: ranked by the model's biases alone
    assert list(out["rec_scores"][0]) == sorted(out["rec_scores"][0], reverse=True)
    cat = load_catalog(str(day_data), None)
    w = load_windows(str(day_data), "test", cat)
    rows = batch_predict(ck, w, PredictConfig(k=3, use_ray=False, batch_size=7))
    assert len(rows) == len(user_rows(w)) and all(len(r[1]) == 3 for r in rows)


# ---------------------------------------------------------------------------------------
# the daily job
# ---------------------------------------------------------------------------------------


def test_daily_job_publishes_and_is_idempotent(udata, tmp_path):
    cfg = _job_cfg(udata, tmp_path)
    s1 = daily_job.run_daily(cfg, "2020-04-20", log=lambda _m: None)
    assert s1["windows"]["dxy"] == "2020-03-31" and s1["windows"]["dx"] == "2018-04-21"
    assert s1["windows"]["dz"] == "2020-04-30"  # as-of + 20 days clipped to the data end
    assert s1["users_published"] > 0
    assert Path(s1["evaluation"]["decay_plot"]).is_file()
    s2 = daily_job.run_daily(cfg, "2020-04-20", log=lambda _m: None)
    assert s2["version"] == s1["version"] and s2["model_version"] == s1["model_version"]
    with SQLiteRecommendationStore(cfg.store.path) as store:
        assert [v.version for v in store.versions()] == [s1["version"]]
        some_user = next(iter(pd.read_parquet(Path(cfg.work_dir) / "2020-04-20/data/predict_x.parquet")["user_id"]))
        recs = store.get(str(some_user))
        assert recs is not None and len(recs.items) == 5


def test_failed_step_publishes_nothing_and_keeps_yesterday(udata, tmp_path):
    cfg = _job_cfg(udata, tmp_path)
    s1 = daily_job.run_daily(cfg, "2020-04-10", log=lambda _m: None)
    for step in ("train", "predict"):
        bad = cfg.model_copy(update={"fail_at": step})
        with pytest.raises(daily_job.DailyJobError, match=f"fail_at={step}"):
            daily_job.run_daily(bad, "2020-04-11", log=lambda _m: None)
        with SQLiteRecommendationStore(cfg.store.path) as store:
            assert store.current().version == s1["version"]
            assert [v.as_of for v in store.versions(include_incomplete=True)] == ["2020-04-10"]


@pytest.mark.parametrize("as_of,msg", [
    ("2030-01-01", "outside the data"),
    ("2019-06-01", "outside the data"),
    ("2020-13-01", "must be a date YYYY-MM-DD"),
])
def test_daily_job_bad_as_of(udata, tmp_path, as_of, msg):
    with pytest.raises(daily_job.DailyJobError, match=msg):
        daily_job.run_daily(_job_cfg(udata, tmp_path), as_of, log=lambda _m: None)
    assert not Path(tmp_path / "recs.sqlite").exists()


def test_daily_job_cli_errors_exit_1_and_config_errors_exit_2(udata, tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    import yaml

    cfg_file.write_text(yaml.safe_dump(_job_cfg(udata, tmp_path).model_dump(mode="json")))
    assert daily_job.main(["-c", str(cfg_file), "--as-of", "2030-01-01"]) == 1
    assert "nothing was published" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        daily_job.main(["-c", str(cfg_file), "--as-of", "2020-04-20", "window.output_days=800"])
    assert e.value.code == 2


def test_shipped_daily_configs_load():
    root = Path(__file__).resolve().parents[2] / "jobs" / "configs"
    for name in ("daily_ml100k.yaml", "daily_ml100k_predictor.yaml"):
        cfg = load_config(DailyJobConfig, root / name, [])
        assert cfg.source.format == "movielens" and cfg.filter.value_above == 3
    cfg = load_config(DailyTrainJobConfig, root / "daily_synthetic_1m.yaml", [])
    assert cfg.data.synthetic.n_items == 1_000_000 and cfg.scaling.num_workers == 2
    with pytest.raises(ConfigError):
        load_config(DailyJobConfig, root / "daily_ml100k.yaml", ["train.scaling.zero_stage=1"])


def test_model_version_is_content_hash(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"abc")
    v1 = model_version_of(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"abd")
    assert model_version_of(tmp_path) != v1 and len(v1) == 12


def test_day_ms():
    assert day_ms("1970-01-02") == 86_400_000


def test_batch_predict_job_publishes_and_is_idempotent(day_data, tmp_path):
    from rayrec.jobs import batch_predict as bp_job

    from rayrec.platform.daily.config import BatchPredictJobConfig

    cfg = load_config(DailyTrainJobConfig, None, [f"data.path={day_data}", "train.epochs=1",
                                                  "model.hidden_sizes=[8,4]", f"run.storage_path={tmp_path}"])
    ck = fit_daily(cfg, log=lambda _m: None).checkpoint_dir
    job = BatchPredictJobConfig.model_validate({
        "checkpoint": ck, "data_path": str(day_data), "as_of": "2020-04-20",
        "predict": {"k": 4, "use_ray": False}, "store": {"path": str(tmp_path / "s.sqlite")},
    })
    r1 = bp_job.run_batch_predict(job, log=lambda _m: None)
    r2 = bp_job.run_batch_predict(job, log=lambda _m: None)
    n_users = pd.read_parquet(day_data / "predict_x.parquet")["user_id"].nunique()
    assert r1 == r2 and r1["users"] == n_users
    with SQLiteRecommendationStore(tmp_path / "s.sqlite") as store:
        (v,) = store.versions()
        assert v.as_of == "2020-04-20" and v.model_version == r1["model_version"] and v.n_rows == n_users
    # a prediction date before the purchases is rejected (inputs after the window end)
    assert bp_job.main([f"checkpoint={ck}", f"data_path={day_data}", "as_of=2020-01-01",
                        "predict.use_ray=false", f"store.path={tmp_path / 's2.sqlite'}"]) == 1
    assert not (tmp_path / "s2.sqlite").exists()


def test_train_daily_cli_in_process(tmp_path, capsys):
    from rayrec.jobs import train_daily

    rc = train_daily.main([
        "data.synthetic={n_users: 20, n_items: 50, items_per_user: 3}", "data.valid_prefix=null",
        "train.epochs=1", "model.hidden_sizes=[4,4]", "scaling.num_workers=0", f"run.storage_path={tmp_path}",
    ])
    out = capsys.readouterr().out
    assert rc == 0 and "final metrics" in out and "checkpoint_000001" in out
    # the same run with another model: a clear error instead of a state_dict mismatch
    assert train_daily.main([
        "data.synthetic={n_users: 20, n_items: 50, items_per_user: 3}", "data.valid_prefix=null",
        "train.epochs=2", "model.hidden_sizes=[8,4]", "scaling.num_workers=0", f"run.storage_path={tmp_path}",
    ]) == 1
    assert "holds another model config or catalog" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_daily.main(["data.synthetic={n_users: 5, n_items: 3}", "data.catalog_size=2"])

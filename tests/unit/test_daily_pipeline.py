"""The daily pipeline without Ray: data -> CSR windows, the one ``fit`` in process
(``model.name: daily_nn``, ``ray.use_ray: false``) and the registry loading its checkpoints, the daily job (preprocess -> train -> evaluate ->
predict -> publish) and its bad inputs.  Data: a small MovieLens-format file generated here
(fast and deterministic)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rayrec.jobs import daily as daily_job
from rayrec.models.daily_nn import DailyNN
from rayrec.platform.checkpoint import load_model
from rayrec.platform.config import ConfigError, load_config
from rayrec.platform.daily.config import (
    DailyJobConfig,
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
    synthetic_windows,
)
from rayrec.platform.daily.evaluate import item_knn_scores, plot_decay, pop_scores
from rayrec.platform.daily.predict import TopKScorer, batch_predict, model_version_of, user_rows
from rayrec.platform.store import SQLiteRecommendationStore
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.families import TrainingInputError
from rayrec.platform.training.trainer import check_inputs, fit

#: every in-process daily training config of this file: the daily model, no Ray
DAILY = ["model.name=daily_nn", "ray.use_ray=false"]


def _train_cfg(*overrides: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, None, [*DAILY, *overrides])


def _at(history: list[dict], epoch: int) -> dict:
    """The metrics of one epoch of a run's history."""
    (m,) = [h for h in history if h["epoch"] == epoch]
    return m

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
            "model": {"name": "daily_nn", "variant": "soft_split", "decay": "learned", "hidden_sizes": [16, 8], "dropout": 0.0},
            "optim": {"lr": 0.01},
            "train": {"epochs": 2, "batch_size": 16},
            "ray": {"use_ray": False},
        },
        "predict": {"k": 5}, "ray": {"use_ray": False},
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
# the registry's builder loads what fit trained
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant,decay", [("soft_split", "learned"), ("predictor", "parametric")])
def test_registry_build_loads_fit_checkpoint_with_the_trained_scores(tmp_path, monkeypatch, variant, decay):
    from rayrec.models import registry
    from rayrec.models.daily_nn import DailyNNTask
    from rayrec.platform.checkpoint import load_checkpoint

    trained: list[DailyNN] = []
    real = DailyNNTask.build

    def keep(self, env, generator):  # the model the loop trains, kept for comparison
        trained.append(real(self, env, generator))
        return trained[-1]

    monkeypatch.setattr(DailyNNTask, "build", keep)
    model_cfg = {"name": "daily_nn", "variant": variant, "decay": decay, "hidden_sizes": [8, 6], "dropout": 0.1,
                 "input_noise": 0.1, "l2": 1e-4}
    if decay == "parametric":
        model_cfg["ti"] = 40.0
    cfg = TrainJobConfig.model_validate({
        "model": model_cfg,
        "data": {"synthetic": {"n_users": 40, "n_items": 30, "items_per_user": 4, "targets_per_user": 2},
                 "valid_split": None},
        "train": {"epochs": 2, "batch_size": 8, "seed": 3},
        "optim": {"lr": 0.02},
        "ray": {"use_ray": False},
        "run": {"storage_path": str(tmp_path), "name": "reg"},
    })
    res = fit(cfg, log=lambda _m: None)
    (model,) = trained
    model.eval()
    ck = load_checkpoint(res.checkpoint_dir)
    spec = registry.get(ck.config["model"]["name"])
    mcfg = spec.config_cls.model_validate(ck.config["model"])
    built = spec.build(mcfg, len(ck.item_ids))
    assert set(ck.model_state) == set(built.state_dict())  # the unsharded layout, key for key
    windows = synthetic_windows(cfg.data.synthetic)
    inputs, _ = windows.batch(np.arange(windows.n_users))
    with torch.no_grad():
        want = model.score(model(inputs))  # (U, P), the trained model's
        assert not torch.allclose(built.eval().score(built(inputs)), want)  # before loading
        built.load_state_dict(ck.model_state, strict=True)
        torch.testing.assert_close(built.score(built(inputs)), want, rtol=0, atol=0)
        # load_model(kind="daily") is that builder + strict load
        lm = load_model(res.checkpoint_dir, kind="daily")
        loaded, items, meta = lm.model, lm.item_ids, lm.checkpoint.meta
        assert isinstance(loaded, DailyNN) and not loaded.training and meta["epoch"] == 2
        assert items == ck.item_ids
        torch.testing.assert_close(loaded.score(loaded(inputs)), want, rtol=0, atol=0)
    # another layout (e.g. the old sharded keys) is refused, not half-loaded
    old = dict(ck.model_state)
    old["input_shard"] = old.pop("input_layer.weight")
    with pytest.raises(RuntimeError, match="input_shard"):
        built.load_state_dict(old, strict=True)


# ---------------------------------------------------------------------------------------
# training, evaluation helpers
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def day_data(udata, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pp")
    cfg = _job_cfg(udata, tmp)
    daily_job.preprocess_for_date(cfg, dt.date(2020, 4, 20), tmp, lambda _m: None)
    return tmp / "data"


def test_fit_in_process_checkpoints_every_epoch_and_resumes(day_data, tmp_path):
    cfg = _train_cfg(
        f"data.path={day_data}", "train.epochs=3", "train.batch_size=8", "optim.lr=0.01",
        "model.hidden_sizes=[16,8]", "model.decay=learned", f"run.storage_path={tmp_path}", "run.keep_checkpoints=5",
    )
    res = fit(cfg, log=lambda _m: None)
    cks = sorted(p.name for p in (tmp_path / "daily_nn").glob("checkpoint_*"))
    assert cks == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000003"]
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert "precision@10" in res.metrics and 0 <= res.metrics["pcc@10"] <= 1
    assert len(res.metrics["learned_decay"]) == 32
    meta = json.loads(Path(res.checkpoint_dir, "meta.json").read_text())
    assert meta["epoch"] == 3
    lm = load_model(res.checkpoint_dir, kind="daily")
    model, items = lm.model, lm.item_ids
    assert isinstance(model, DailyNN) and model.num_items == len(items) and not model.is_sharded
    # re-running the same run resumes at the end: no epoch is trained again (no checkpoint
    # written, the last one untouched; any history is the restored run's, not retrained)
    weights = Path(res.checkpoint_dir, "model.pt")
    before = (weights.read_bytes(), weights.stat().st_mtime_ns)
    again = fit(cfg, log=lambda _m: None)
    assert again.checkpoint_dir == res.checkpoint_dir and again.metrics["epoch"] == 3
    assert sorted(p.name for p in (tmp_path / "daily_nn").glob("checkpoint_*")) == cks
    assert (weights.read_bytes(), weights.stat().st_mtime_ns) == before
    assert all(h["loss"] == _at(res.history, h["epoch"])["loss"] for h in again.history)


def test_resume_restores_adam_state_exactly_and_takes_a_new_lr(day_data, tmp_path):
    """PBT restores need the optimiser's moments: resuming from epoch 1 gives the same epoch-2
    loss as the uninterrupted run; a restored run under a new lr trains with that lr."""
    import shutil

    from rayrec.platform.checkpoint import load_checkpoint

    common = [f"data.path={day_data}", "train.batch_size=8", "optim.lr=0.01", "model.hidden_sizes=[16,8]",
              "model.decay=learned", "run.keep_checkpoints=5", "model.dropout=0.0"]
    full = fit(_train_cfg(*common, "train.epochs=2", f"run.storage_path={tmp_path / 'a'}"),
               log=lambda _m: None)
    ck1 = tmp_path / "a" / "daily_nn" / "checkpoint_000001"
    optim = load_checkpoint(ck1).optim_state
    assert optim is not None and optim["state"], "the checkpoint must hold Adam's moments"
    # a second run that starts from the epoch-1 checkpoint only
    (tmp_path / "b" / "daily_nn").mkdir(parents=True)
    shutil.copytree(ck1, tmp_path / "b" / "daily_nn" / "checkpoint_000001")
    resumed = fit(_train_cfg(*common, "train.epochs=2", f"run.storage_path={tmp_path / 'b'}"),
                  log=lambda _m: None)
    assert resumed.history[-1]["epoch"] == 2 and resumed.metrics["epoch"] == 2
    assert _at(resumed.history, 2)["loss"] == pytest.approx(_at(full.history, 2)["loss"], rel=1e-6)
    # under another lr the continuation differs (the new lr is used, not the saved one)
    (tmp_path / "c" / "daily_nn").mkdir(parents=True)
    shutil.copytree(ck1, tmp_path / "c" / "daily_nn" / "checkpoint_000001")
    other = fit(_train_cfg(*common[:2], "optim.lr=0.05", *common[3:], "train.epochs=2",
                           f"run.storage_path={tmp_path / 'c'}"),
                log=lambda _m: None)
    assert _at(other.history, 2)["loss"] != pytest.approx(_at(full.history, 2)["loss"], rel=1e-6)
    lr = load_checkpoint(other.checkpoint_dir).optim_state["param_groups"][0]["lr"]
    assert lr == 0.05


def test_fit_daily_catalog_too_large(day_data, tmp_path):
    cfg = _train_cfg(f"data.path={day_data}", "data.catalog_size=100000", f"run.storage_path={tmp_path}")
    with pytest.raises(DailyDataError, match="catalog_size=100000 exceeds"):
        fit(cfg)


def test_use_gpu_on_a_cpu_machine_is_refused_before_training(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    cfg = _train_cfg("data.synthetic={n_users: 20, n_items: 50, items_per_user: 3}", "data.valid_split=null",
                     "scaling.use_gpu=true", f"run.storage_path={tmp_path}")
    with pytest.raises(TrainingInputError, match=r"scaling\.use_gpu"):
        check_inputs(cfg)
    assert not (tmp_path / "daily_nn").exists()  # refused before any run directory


def test_placement_and_custom_resources_validate_for_a_daily_config():
    cfg = load_config(TrainJobConfig, None, [
        "model.name=daily_nn", "scaling.num_workers=2", "scaling.placement_strategy=STRICT_SPREAD",
        "scaling.resources_per_worker={trainer: 1}", "scaling.cpus_per_worker=0.5"])
    assert cfg.scaling.placement_strategy == "STRICT_SPREAD"
    assert cfg.scaling.resources_per_worker == {"trainer": 1.0}
    assert cfg.scaling.engine == "tensor_parallel" and cfg.model.name == "daily_nn"  # the daily default
    with pytest.raises(ConfigError, match="placement_strategy"):
        load_config(TrainJobConfig, None, ["model.name=daily_nn", "scaling.placement_strategy=EVERYWHERE"])
    with pytest.raises(ConfigError, match="resources_per_worker"):
        load_config(TrainJobConfig, None, ["model.name=daily_nn", "scaling.resources_per_worker={CPU: 2}"])


def test_old_daily_keys_name_their_new_key():
    for old, new in [("data.valid_prefix=null", "data.valid_split"), ("data.train_prefix=x", "data.train_split"),
                     ("train.ks=[1]", "eval.ks"), ("train.eval_batch_size=8", "eval.batch_size"),
                     ("optim.decay_lr_multiplier=30", "optim.lr_multipliers.decay"),
                     ("scaling.num_workers=0", "ray.use_ray=false"),
                     ("scaling.engine=torch", "scaling.engine=tensor_parallel")]:
        with pytest.raises(ConfigError, match=re.escape(new)):
            load_config(TrainJobConfig, None, ["model.name=daily_nn", old])


def test_decay_multiplier_applies_to_the_learned_decay_and_is_harmless_without_it(tmp_path):
    """``optim.lr_multipliers.decay`` (shipped in daily_ml100k.yaml) scales the learned decay's
    group; the comparison table trains every variant from that one config, so variants without
    a learned decay must train too. A name no variant has is an error naming the groups."""
    from types import SimpleNamespace

    from rayrec.models.daily_nn import DailyNNTask
    from rayrec.platform.training.optim import build_optimizer

    def job(decay, mult):
        return load_config(TrainJobConfig, None, [
            "model.name=daily_nn", f"model.decay={decay}", "model.hidden_sizes=[8,4]", "ray.use_ray=false",
            "data.synthetic={n_users: 40, n_items: 30}", "data.valid_split=null", "train.epochs=1",
            f"optim.lr_multipliers={{{mult}: 30.0}}", f"run.storage_path={tmp_path}", f"run.name={decay}_{mult}"])

    one_rank = SimpleNamespace(item_range=None, n_items=30, seed=0, reduce_sum=lambda t: t,
                               copy_to_parallel=lambda t: t, gather=lambda t, d: t, sparse_rows=False)
    for decay in ("learned", "parametric", "none"):
        j = job(decay, "decay")
        task = DailyNNTask(j)
        module = task.build(one_rank, torch.Generator().manual_seed(0))
        opt = build_optimizer(task.param_groups(module, j.optim.lr), j.optim, known=task.param_group_names)
        lrs = {g.get("name"): g["lr"] for g in opt.param_groups}
        assert lrs["main"] == pytest.approx(1e-3)
        if decay == "learned":
            assert lrs["decay"] == pytest.approx(3e-2)
        else:
            assert "decay" not in lrs
        assert fit(j, log=lambda _m: None).metrics["epoch"] == 1
    with pytest.raises(ValueError, match=r"no parameter group \['dekay'\]; the model has \['decay', 'main'\]"):
        fit(job("learned", "dekay"), log=lambda _m: None)


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
    cfg = _train_cfg(f"data.path={day_data}", "train.epochs=1", "model.hidden_sizes=[8,4]",
                     f"run.storage_path={tmp_path}")
    ck = fit(cfg, log=lambda _m: None).checkpoint_dir
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
    rows = batch_predict(ck, w, PredictConfig(k=3, batch_size=7), use_ray=False)
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
    cfg = load_config(TrainJobConfig, root / "daily_synthetic_1m.yaml", [])
    assert cfg.data.synthetic.n_items == 1_000_000 and cfg.scaling.num_workers == 2
    assert cfg.model.name == "daily_nn" and cfg.ray.use_ray and cfg.scaling.engine == "tensor_parallel"
    cfg = load_config(TrainJobConfig, root / "daily_ml100k_train.yaml", [])
    assert cfg.model.name == "daily_nn" and cfg.data.valid_split == "valid_test"
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

    cfg = _train_cfg(f"data.path={day_data}", "train.epochs=1", "model.hidden_sizes=[8,4]",
                     f"run.storage_path={tmp_path}")
    ck = fit(cfg, log=lambda _m: None).checkpoint_dir
    job = BatchPredictJobConfig.model_validate({
        "checkpoint": ck, "data_path": str(day_data), "as_of": "2020-04-20",
        "predict": {"k": 4}, "ray": {"use_ray": False}, "store": {"path": str(tmp_path / "s.sqlite")},
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
                        "ray.use_ray=false", f"store.path={tmp_path / 's2.sqlite'}"]) == 1
    assert not (tmp_path / "s2.sqlite").exists()


def test_train_cli_daily_in_process(tmp_path, capsys):
    from rayrec.jobs import train

    rc = train.main([
        *DAILY, "data.synthetic={n_users: 20, n_items: 50, items_per_user: 3}", "data.valid_split=null",
        "train.epochs=1", "model.hidden_sizes=[4,4]", f"run.storage_path={tmp_path}",
    ])
    out = capsys.readouterr().out
    assert rc == 0 and "final metrics" in out and "checkpoint_000001" in out
    # the same run with another model: a clear error instead of a state_dict mismatch
    assert train.main([
        *DAILY, "data.synthetic={n_users: 20, n_items: 50, items_per_user: 3}", "data.valid_split=null",
        "train.epochs=2", "model.hidden_sizes=[8,4]", f"run.storage_path={tmp_path}",
    ]) == 1
    assert "holds another model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main([*DAILY, "data.synthetic={n_users: 5, n_items: 3}", "data.catalog_size=2"])


# ---------------------------------------------------------------------------------------
# issue 15: degenerate windows, POP row and publish floors (4), backfill (5), metadata (6)
# ---------------------------------------------------------------------------------------


def test_degenerate_windows_are_an_error_naming_the_window_dates_and_counts(udata, tmp_path):
    cfg = _job_cfg(udata, tmp_path, sanity={"min_train_users": 1000})
    with pytest.raises(daily_job.DailyJobError) as e:
        daily_job.run_daily(cfg, "2020-04-20", log=lambda _m: None)
    msg = str(e.value)
    plan = json.loads((Path(cfg.work_dir) / "2020-04-20" / "windows.json").read_text())
    assert "training window X = [2018-04-21, 2020-03-31) -> Y = [2020-03-31, 2020-04-20)" in msg
    assert f"has {plan['train_users']} users" in msg and "sanity.min_train_users=1000" in msg
    assert 0 < plan["train_users"] < 1000 and "sanity.on_small: warn" in msg
    assert not (tmp_path / "recs.sqlite").exists()  # nothing trained, nothing published
    cfg = _job_cfg(udata, tmp_path, sanity={"min_eval_users": 1000})
    with pytest.raises(daily_job.DailyJobError, match=r"future window XY = \[2018-04-21, 2020-04-20\) "
                       r"-> Z = \[2020-04-20, 2020-04-30\) has \d+ users .*min_eval_users=1000"):
        daily_job.run_daily(cfg, "2020-04-20", log=lambda _m: None)


def test_small_windows_warn_pop_row_always_and_the_floor_refuses_unless_forced(udata, tmp_path):
    cfg = _job_cfg(udata, tmp_path, sanity={"min_eval_users": 1000, "on_small": "warn"},
                   publish={"k": 5, "min_precision": 1.0})
    logs: list[str] = []
    with pytest.raises(daily_job.DailyJobError, match=r"publish refused: precision@5 0\.\d{4} < "
                       r"publish\.min_precision=1\.0 \(\d+ users evaluated\); --force"):
        daily_job.run_daily(cfg, "2020-04-20", log=logs.append)
    assert not (tmp_path / "recs.sqlite").exists()
    assert any(m.startswith("WARNING: future window") and "min_eval_users=1000" in m for m in logs)
    day = Path(cfg.work_dir) / "2020-04-20"
    ev = json.loads((day / "evaluation.json").read_text())
    model_row, pop_row = ev["rows"]
    assert pop_row["model"] == "POP" and pop_row["n_users"] == model_row["n_users"] == ev["n_users"]
    assert ev["window_users"]["eval"] == ev["n_users"] and ev["precision@5"] < 1.0
    # the POP row is POP's own metric on the same users (not the model's)
    cat = load_catalog(str(day / "data"), None)
    test = load_windows(str(day / "data"), "test", cat)
    from rayrec.platform.daily.evaluate import evaluate_scores

    assert pop_row["precision@5"] == pytest.approx(
        evaluate_scores(pop_scores(test), test, [5])["precision@5"])
    md = (day / "comparison.md").read_text().splitlines()
    assert md[0].endswith("| n_users |")
    assert md[3].startswith("| POP |") and md[3].endswith(f"| {pop_row['n_users']} |")
    s = daily_job.run_daily(cfg, "2020-04-20", log=lambda _m: None, force=True)
    assert s["users_published"] > 0 and any(w.startswith("--force: publishing") for w in s["warnings"])
    with SQLiteRecommendationStore(cfg.store.path) as store:
        assert store.current().version == s["version"]


def test_model_below_pop_is_a_warning_and_pop_ratio_floor():
    cfg = DailyJobConfig.model_validate({"source": {"format": "movielens", "path": "x"},
                                         "train": {"eval": {"ks": [10]}},
                                         "publish": {"min_pop_ratio": 0.5}})
    ev = {"rows": [{"model": "m", "precision@10": 0.0077, "n_users": 8},
                   {"model": "POP", "precision@10": 0.0615, "n_users": 8}]}
    logs: list[str] = []
    with pytest.raises(daily_job.DailyJobError, match=r"min_pop_ratio=0\.5 x POP 0\.0615"):
        daily_job.check_publish(cfg, ev, False, logs.append, [])
    assert logs == ["WARNING: the model is below POP: precision@10 0.0077 < POP 0.0615 on 8 users"]
    ok = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"min_pop_ratio": 0.1})})
    warned: list[str] = []
    daily_job.check_publish(ok, ev, False, lambda _m: None, warned)  # 0.0077 >= 0.1 x 0.0615
    assert len(warned) == 1 and "below POP" in warned[0]
    with pytest.raises(ValueError, match=r"publish\.k=5 must be one of train\.eval\.ks \[10\]"):
        DailyJobConfig.model_validate({"source": {"format": "movielens", "path": "x"},
                                       "train": {"eval": {"ks": [10]}}, "publish": {"k": 5}})


def test_flat_learned_decay_is_not_reported_as_a_decay_of_thousands_of_days(tmp_path):
    curve = np.ones(32) + 1e-4 * np.arange(32)[::-1]  # nearly flat: a handful of users
    fit = plot_decay(curve, tmp_path / "d.png", observed=[0, 1, 2, 3])
    assert fit["decay_days"] is None and fit["horizon_days"] == pytest.approx(4 * 730 / 32)
    assert "no time decay learned within the observed 91 days" in fit["note"] and (tmp_path / "d.png").is_file()


def test_backfill_needs_the_flag_and_never_moves_current(udata, tmp_path):
    cfg = _job_cfg(udata, tmp_path)
    s1 = daily_job.run_daily(cfg, "2020-04-20", log=lambda _m: None)
    with pytest.raises(daily_job.DailyJobError, match=r"--as-of 2020-04-10 is older than the current "
                       r"version's as-of 2020-04-20 .*--backfill"):
        daily_job.run_daily(cfg, "2020-04-10", log=lambda _m: None)
    assert not (Path(cfg.work_dir) / "2020-04-10").exists()  # refused before any work
    s2 = daily_job.run_daily(cfg, "2020-04-10", log=lambda _m: None, backfill=True)
    assert s2["current"] == s1["version"] and s2["backfill"]
    with SQLiteRecommendationStore(cfg.store.path) as store:
        assert store.current().version == s1["version"]
        info = {v.version: v for v in store.versions()}
        assert info[s2["version"]].as_of == "2020-04-10" and info[s2["version"]].backfill
        user = next(iter(pd.read_parquet(Path(cfg.work_dir) / "2020-04-10/data/predict_x.parquet")["user_id"]))
        assert store.get(str(user), version=s2["version"]).version == s2["version"]
    assert daily_job.main(["-c", _yaml(cfg, tmp_path), "--as-of", "2020-04-10"]) == 1


def _yaml(cfg: DailyJobConfig, tmp: Path) -> str:
    import yaml

    p = tmp / "daily.yaml"
    p.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return str(p)


def _u_item(path: Path, genres: dict[int, list[int]]) -> Path:
    """A MovieLens ``u.item`` for items 1..30: id|title|date||url|19 genre flags."""
    lines = []
    for i in range(1, 31):
        flags = ["1" if g in genres.get(i, []) else "0" for g in range(19)]
        lines.append("|".join([str(i), f"Movie {i} (1995)", "01-Jan-1995", "", "http://x", *flags]))
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    return path


def test_item_metadata_is_written_for_serving_and_user_metadata_refused(udata, tmp_path):
    from rayrec.serve_apps.policy import ItemCatalog
    from rayrec.serve_apps.scoring import read_item_metadata

    with pytest.raises(ValueError, match=r"source\.user_metadata is not used by the daily job"):
        _job_cfg(udata, tmp_path, source={"format": "movielens", "path": str(udata),
                                          "user_metadata": str(tmp_path / "u.user")})
    # u.item genres 1 = Action, 5 = Comedy, 8 = Drama: item 1 is Action|Comedy
    meta = _u_item(tmp_path / "u.item", {1: [1, 5], 2: [5], 3: [8, 1]})
    cfg = _job_cfg(udata, tmp_path, source={"format": "movielens", "path": str(udata),
                                            "event": "purchase", "item_metadata": str(meta)})
    s = daily_job.run_daily(cfg, "2020-04-20", log=lambda _m: None)
    assert Path(s["item_metadata"]) == tmp_path / "item_metadata.parquet"
    cats, titles = read_item_metadata(s["item_metadata"], "|")
    assert cats["1"] == ["Action", "Comedy"] and cats["3"] == ["Action", "Drama"]
    assert titles["2"] == "Movie 2 (1995)" and len(titles) == 30
    cat = ItemCatalog(["1", "2", "3", "4"], cats, titles)
    assert cat.allowed_mask(["Action"]).tolist() == [True, False, True, False]
    bad = tmp_path / "dup.csv"
    bad.write_text("item_id,category\n1,a\n2,b\n1,c\n")
    from rayrec.platform.daily.metadata import read_item_metadata as daily_meta

    with pytest.raises(ValueError, match=r"item_id '1' listed twice \(rows \[1, 3\]\)"):
        daily_meta(bad, "csv")

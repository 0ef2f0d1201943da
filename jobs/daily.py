"""``python -m rayrec.jobs.daily -c jobs/configs/daily_ml100k.yaml --as-of 1998-03-15 [k=v ...]``

The daily job of seed 000 (section 5): preprocess -> train -> evaluate -> batch predict ->
publish, with windows relative to the as-of date::

    dyz = as-of                 (end of the input window used for the predictions)
    dxy = as-of - window.output_days    (7 days in the paper)
    dx  = as-of - window.input_days     (two years)
    dz  = as-of + window.test_days, clipped to the day after the last event in the data
          (when the data ends on or before as-of there is no future window: evaluate is
          skipped and says so)

Everything for one date lives in ``<work_dir>/<as-of>/``.  Re-running a date is idempotent:
preprocessing is byte-identical, training resumes from (and, when finished, reuses) the
date's last checkpoint, and the store returns the existing version for the same
(as-of, model version).  Every step runs before the publish, and the publish itself is one
version switch: a failed step publishes nothing and yesterday's version keeps serving.

Sanity (``sanity``): before training, the training window needs ``min_train_users`` users
with an output purchase and the future window ``min_eval_users`` (an error naming the
window, its dates and the counts; ``on_small: warn`` logs a WARNING and goes on).  Every
evaluation has a POP row (``evaluation.json`` ``rows``, ``comparison.md``, with
``n_users``); a model below POP is a WARNING, and ``publish.min_precision`` /
``publish.min_pop_ratio`` refuse the publish unless ``--force``.

Backfill: an as-of older than the store's current version is refused unless ``--backfill``,
which stores it as a version (listed, readable by name) without moving ``current``.

``source.item_metadata`` is written, normalised, for the recommender's
``catalog.item_metadata`` (``metadata.output_path``; see
:mod:`rayrec.platform.daily.metadata`); ``source.user_metadata`` is refused (unused).

``--compare`` instead trains the seed's comparison (predictor / EW / soft split, with and
without time decay, plus POP and Item-KNN) on the as-of windows and writes
``comparison.md``/``.json`` and the decay plots to ``<work_dir>/<as-of>/compare``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayrec.jobs import _cli
from rayrec.platform.daily.config import DailyJobConfig
from rayrec.platform.sections import resolve_use_ray
from rayrec.platform.training.config import TrainJobConfig

CONFIGS = Path(__file__).parent / "configs"


class DailyJobError(RuntimeError):
    """A daily run that cannot proceed (the message says which input is wrong)."""


def parse_as_of(text: str) -> date:
    try:
        return date.fromisoformat(str(text))
    except ValueError:
        raise DailyJobError(f"--as-of must be a date YYYY-MM-DD, got {text!r}") from None


def _read_events(cfg: DailyJobConfig) -> tuple[pd.DataFrame, Any]:
    """Raw purchases (user_id, item_id, ts ms) after the value filter, of every source; an
    event in several sources (same user, item and time) is kept once."""
    frames, first_rf = [], None
    for src in cfg.sources:
        df, rf = _read_one(cfg, src)
        frames.append(df)
        first_rf = first_rf or rf
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(frames) > 1:
        out = out.drop_duplicates(["user_id", "item_id", "ts_ms"], keep="first")
    if out.empty:
        raise DailyJobError(f"source {', '.join(str(s.path) for s in cfg.sources)}: no purchases after filtering")
    return out.reset_index(drop=True), first_rf


def _read_one(cfg: DailyJobConfig, src) -> tuple[pd.DataFrame, Any]:
    from rayrec.platform.preprocessing import readers

    kwargs: dict[str, Any] = {}
    if src.format in ("csv", "parquet"):
        kwargs = dict(column_map=src.column_map, ts_format=src.ts_format, sep=src.sep)
    if src.event:
        kwargs["event"] = src.event
    rf = readers.read_source(src.format, src.path, **kwargs)
    df = rf.frame
    ts = pd.to_numeric(df["ts"], errors="coerce")
    scale = {"unix_s": 1000.0, "unix_ms": 1.0}.get(rf.ts_format)
    if scale is None:
        ts_ms = pd.to_datetime(df["ts"], utc=True, errors="coerce").dt.as_unit("ms").astype("int64")
    else:
        ts_ms = ts * scale
    out = pd.DataFrame({"user_id": df["user_id"].astype(str), "item_id": df["item_id"].astype(str),
                        "ts_ms": ts_ms.to_numpy()})
    if cfg.filter.value_above is not None:
        out = out.loc[pd.to_numeric(df["value"], errors="coerce").to_numpy() > cfg.filter.value_above]
    return out.dropna(subset=["ts_ms"]), rf


def _day(ms: float) -> date:
    return (pd.Timestamp(int(ms), unit="ms", tz="UTC")).date()


def plan_windows(cfg: DailyJobConfig, as_of: date, first: date, last: date) -> dict[str, date]:
    """The as-of windows; clear errors when the date lies outside the data."""
    w = cfg.window
    dyz = as_of
    dxy = as_of - timedelta(days=w.output_days)
    dx = as_of - timedelta(days=w.input_days)
    end = last + timedelta(days=1)
    if dxy <= first:
        raise DailyJobError(
            f"--as-of {as_of} is outside the data ({first} .. {last}): the output window "
            f"[{dxy}, {dyz}) must start after the first event; use a date after "
            f"{first + timedelta(days=w.output_days)}"
        )
    if dyz > end:
        raise DailyJobError(
            f"--as-of {as_of} is outside the data ({first} .. {last}): no purchases in "
            f"[{dxy}, {dyz}); use a date up to {end}"
        )
    dz = min(as_of + timedelta(days=w.test_days), end)
    if dz <= dyz:
        dz = dyz + timedelta(days=1)  # empty future window: evaluate is skipped
    return {"dx": dx, "dxy": dxy, "dyz": dyz, "dz": dz}


def preprocess_for_date(cfg: DailyJobConfig, as_of: date, day_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Step 1: date_windows preprocess for the as-of date + the prediction input split."""
    from rayrec.platform.daily.data import day_ms
    from rayrec.platform.data import load_items
    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.preprocessing.pipeline import run_preprocess

    events, _ = _read_events(cfg)
    first, last = _day(events["ts_ms"].min()), _day(events["ts_ms"].max())
    win = plan_windows(cfg, as_of, first, last)
    out = day_dir / "data"
    pcfg = PreprocessJobConfig.model_validate({
        "source": [src.model_dump(mode="json") for src in cfg.sources] if len(cfg.sources) > 1
        else cfg.sources[0].model_dump(mode="json"),
        "validation": cfg.validation.model_dump(mode="json"),
        "filter": cfg.filter.model_dump(mode="json"),
        "split": {"name": "date_windows", **{k: v.isoformat() for k, v in win.items()},
                  "valid_shift_days": cfg.window.valid_shift_days},
        "output": {"path": str(out), "overwrite": True},
        "ray": {"use_ray": False},
    })
    run_preprocess(pcfg, log=log)
    items = load_items(str(out))
    idx = dict(zip(items["item_id"].astype(str), items["item_idx"].astype(np.int64)))
    ts = events["ts_ms"].to_numpy()
    sel = events.loc[(ts >= day_ms(win["dx"])) & (ts < day_ms(win["dyz"]))]
    item_idx = sel["item_id"].map(idx)
    sel = sel.loc[item_idx.notna()]
    pred = pd.DataFrame({
        "user_id": sel["user_id"].to_numpy(),
        "item_idx": item_idx.loc[sel.index].astype(np.int64).to_numpy(),
        "ts": pd.to_datetime(sel["ts_ms"].astype(np.int64), unit="ms", utc=True).to_numpy(),
    }).sort_values(["user_id", "ts", "item_idx"], kind="stable")
    pred.to_parquet(out / "predict_x.parquet", index=False)
    plan = {k: v.isoformat() for k, v in win.items()}
    plan.update({"data_first": first.isoformat(), "data_last": last.isoformat(),
                 "dz_rule": "as-of + test_days, clipped to the day after the last event",
                 "predict_users": int(pred["user_id"].nunique())})
    (day_dir / "windows.json").write_text(json.dumps(plan, indent=1))
    log(f"windows for {as_of}: {plan}")
    return plan


def train_cfg_for_date(cfg: DailyJobConfig, day_dir: Path) -> TrainJobConfig:
    t = cfg.train
    return t.model_copy(update={
        "data": t.data.model_copy(update={"path": str(day_dir / "data"), "synthetic": None}),
        "run": t.run.model_copy(update={"storage_path": str(day_dir / "runs"), "name": "daily", "checkpoint": True}),
    })


def _current_version(cfg: DailyJobConfig):
    """The store's current version (None without a store file or a published version)."""
    from rayrec.platform.store import SQLiteRecommendationStore

    if not Path(cfg.store.path).is_file():
        return None
    with SQLiteRecommendationStore(cfg.store.path, create=False) as store:
        return store.current()


def check_backfill(cfg: DailyJobConfig, as_of: date, backfill: bool) -> None:
    """An as-of older than the current version's needs ``--backfill`` (which keeps
    ``current``): publishing it as current would move the served recommendations back."""
    cur = _current_version(cfg)
    if cur is not None and as_of.isoformat() < cur.as_of and not backfill:
        raise DailyJobError(
            f"--as-of {as_of} is older than the current version's as-of {cur.as_of} (version "
            f"{cur.version} in {cfg.store.path}): publishing it would move the served "
            "recommendations back in time; pass --backfill to store it as a version without "
            "moving current")


def _warn(log: Callable[[str], None], warnings: list[str], text: str) -> None:
    warnings.append(text)
    log(f"WARNING: {text}")


def check_window_users(cfg: DailyJobConfig, plan: dict[str, Any], n_train: int, n_eval: int | None,
                       log: Callable[[str], None], warnings: list[str]) -> None:
    """``sanity.min_train_users`` / ``min_eval_users`` (``n_eval`` None: no future window)."""
    s = cfg.sanity
    small = []
    if n_train < s.min_train_users:
        small.append(f"training window X = [{plan['dx']}, {plan['dxy']}) -> Y = [{plan['dxy']}, "
                     f"{plan['dyz']}) has {n_train} users with an output purchase, below "
                     f"sanity.min_train_users={s.min_train_users}")
    if n_eval is not None and n_eval < s.min_eval_users:
        small.append(f"future window XY = [{plan['dx']}, {plan['dyz']}) -> Z = [{plan['dyz']}, "
                     f"{plan['dz']}) has {n_eval} users with a purchase, below "
                     f"sanity.min_eval_users={s.min_eval_users}")
    if not small:
        return
    if s.on_small == "error":
        raise DailyJobError("; ".join(small) + " (widen window.*, pick another --as-of, lower "
                            "the sanity.* minimum, or set sanity.on_small: warn)")
    for text in small:
        _warn(log, warnings, text + " (sanity.on_small: warn)")


def check_publish(cfg: DailyJobConfig, evaluation: dict[str, Any], force: bool,
                  log: Callable[[str], None], warnings: list[str]) -> None:
    """The model vs POP (a WARNING when below) and the ``publish`` floors (refused unless
    ``force``)."""
    if "rows" not in evaluation:
        if cfg.publish.min_precision is not None or cfg.publish.min_pop_ratio is not None:
            _warn(log, warnings, "publish floors not checked: the future window is empty")
        return
    k = cfg.publish.k or max(cfg.train.eval.ks)
    key = f"precision@{k}"
    model, pop = evaluation["rows"][0], evaluation["rows"][1]
    m, p, n = float(model[key]), float(pop[key]), model["n_users"]
    if m < p:
        _warn(log, warnings, f"the model is below POP: {key} {m:.4f} < POP {p:.4f} on {n} users")
    refused = []
    if cfg.publish.min_precision is not None and m < cfg.publish.min_precision:
        refused.append(f"{key} {m:.4f} < publish.min_precision={cfg.publish.min_precision}")
    if cfg.publish.min_pop_ratio is not None and m < cfg.publish.min_pop_ratio * p:
        refused.append(f"{key} {m:.4f} < publish.min_pop_ratio={cfg.publish.min_pop_ratio} x POP "
                       f"{p:.4f}")
    if not refused:
        return
    text = "; ".join(refused) + f" ({n} users evaluated)"
    if not force:
        raise DailyJobError(f"publish refused: {text}; --force publishes anyway")
    _warn(log, warnings, f"--force: publishing although {text}")


def _model_label(tcfg: TrainJobConfig) -> str:
    m = tcfg.model
    return f"{m.name} ({getattr(m, 'variant', '')}, {getattr(m, 'decay', '')} decay)"


def _fail(cfg: DailyJobConfig, step: str) -> None:
    if cfg.fail_at == step:
        raise DailyJobError(f"fail_at={step}: injected failure (testing aid)")


def run_daily(cfg: DailyJobConfig, as_of_text: str, log: Callable[[str], None] = print, *,
              force: bool = False, backfill: bool = False) -> dict[str, Any]:
    """preprocess -> train -> evaluate -> batch predict -> publish for one date.

    ``force``: publish below the ``publish`` floors; ``backfill``: store the version without
    moving ``current`` (needed for an as-of older than the current version's)."""
    from rayrec.platform import data as pdata
    from rayrec.platform.daily.data import Catalog, load_catalog, load_windows
    from rayrec.platform.daily.evaluate import (
        evaluate_scores,
        plot_decay,
        pop_scores,
        table_markdown,
    )
    from rayrec.platform.daily.predict import batch_predict, model_version_of, publish_predictions
    from rayrec.platform.daily.trainer import load_daily_model
    from rayrec.platform.store import SQLiteRecommendationStore
    from rayrec.platform.training.trainer import fit

    as_of = parse_as_of(as_of_text)
    check_backfill(cfg, as_of, backfill)
    day_dir = Path(cfg.work_dir).resolve() / as_of.isoformat()
    day_dir.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    warnings: list[str] = []
    t = time.perf_counter()
    _fail(cfg, "preprocess")
    plan = preprocess_for_date(cfg, as_of, day_dir, log)
    meta_df = None
    meta_src = cfg.item_metadata_source
    if meta_src is not None:
        from rayrec.platform.daily.metadata import read_item_metadata

        meta_df = read_item_metadata(meta_src.item_metadata, meta_src.format, cfg.metadata.category_sep)
    tcfg = train_cfg_for_date(cfg, day_dir)
    cat = load_catalog(tcfg.data.path, tcfg.data.catalog_size)
    train_w = load_windows(tcfg.data.path, tcfg.data.train_split, cat)
    n_train = int((np.diff(train_w.y_offsets) > 0).sum())
    test_rows = len(pdata.load_split(tcfg.data.path, f"{tcfg.data.test_split}_y", ["user_id"]))
    test = load_windows(tcfg.data.path, tcfg.data.test_split, cat) if test_rows else None
    n_eval = None if test is None else int((np.diff(test.y_offsets) > 0).sum())
    plan.update({"train_users": n_train, "eval_users": n_eval})
    (day_dir / "windows.json").write_text(json.dumps(plan, indent=1))
    log(f"window users: training {n_train}, future {n_eval}, predictions {plan['predict_users']}")
    check_window_users(cfg, plan, n_train, n_eval, log, warnings)
    times["preprocess_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _fail(cfg, "train")
    res = fit(tcfg, log=log)
    if res.checkpoint_dir is None:
        raise DailyJobError(f"training wrote no checkpoint under {res.run_dir}")
    ck = res.checkpoint_dir
    times["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _fail(cfg, "evaluate")
    model, item_ids, meta = load_daily_model(ck)
    if list(item_ids) != cat.item_ids:
        raise DailyJobError(f"checkpoint {ck} was trained on another catalog than {tcfg.data.path}")
    evaluation: dict[str, Any] = {}
    if test is not None:
        tw = test

        def score(users: np.ndarray):
            import torch

            inputs, _ = tw.batch(users)
            with torch.no_grad():
                return model.score(model(inputs))

        evaluation = {k: v for k, v in evaluate_scores(score, test, tcfg.eval.ks).items()}
        pop = {k: v for k, v in evaluate_scores(pop_scores(test), test, tcfg.eval.ks).items() if k != "protocol"}
        evaluation["rows"] = [{"model": _model_label(tcfg), **{k: v for k, v in evaluation.items()
                                                               if k != "protocol"}},
                              {"model": "POP", **pop}]
        (day_dir / "comparison.md").write_text(table_markdown(evaluation["rows"], tcfg.eval.ks) + "\n")
    else:
        evaluation = {"skipped": f"no purchases after {as_of} in the data (future window empty)"}
    if cfg.plot and tcfg.model.decay == "learned":
        from rayrec.platform.daily.evaluate import observed_buckets

        observed = observed_buckets(train_w)
        evaluation["decay_fit"] = plot_decay(model.learned_decay_curve().tolist(), day_dir / "decay.png",
                                             title=f"learned vs parametric decay, as-of {as_of}",
                                             observed=observed)
        evaluation["decay_plot"] = str(day_dir / "decay.png")
        if evaluation["decay_fit"].get("note"):
            _warn(log, warnings, evaluation["decay_fit"]["note"])
    evaluation["window_users"] = {"train": n_train, "eval": n_eval}
    try:
        check_publish(cfg, evaluation, force, log, warnings)
    finally:
        evaluation["warnings"] = list(warnings)
        (day_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=1, default=float))
    if "rows" in evaluation:
        log("evaluation:\n" + table_markdown(evaluation["rows"], tcfg.eval.ks))
    log(f"evaluation: {evaluation}")
    times["evaluate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _fail(cfg, "predict")
    windows = load_windows(tcfg.data.path, tcfg.data.test_split, Catalog(cat.item_ids, cat.remap),
                           with_targets=False, input_split=str(day_dir / "data" / "predict_x.parquet"))
    use_ray = resolve_use_ray(cfg.ray.use_ray, cfg.ray.address, windows.n_users, cfg.ray.auto_max_rows,
                              "users to score", log)
    if use_ray:
        from rayrec.platform.runtime import init_ray

        init_ray(cfg.ray.address, cfg.ray.num_cpus)
    rows = batch_predict(ck, windows, cfg.predict, use_ray=use_ray)
    times["predict_s"] = time.perf_counter() - t

    t = time.perf_counter()
    mv = model_version_of(ck)
    check_backfill(cfg, as_of, backfill)  # again: another run may have published meanwhile
    Path(cfg.store.path).parent.mkdir(parents=True, exist_ok=True)
    with SQLiteRecommendationStore(cfg.store.path, keep_versions=cfg.store.keep_versions) as store:
        version = publish_predictions(store, rows, as_of.isoformat(), mv, make_current=not backfill)
        current = store.current()
    meta_path = None
    if meta_df is not None and not backfill:
        from rayrec.platform.daily.metadata import write_item_metadata

        meta_path = str(write_item_metadata(meta_df, cfg.metadata.output_path
                                            or Path(cfg.store.path).parent / "item_metadata.parquet"))
        log(f"item metadata ({len(meta_df)} items) -> {meta_path} (the recommender's catalog.item_metadata)")
    times["publish_s"] = time.perf_counter() - t
    summary = {"as_of": as_of.isoformat(), "windows": plan, "checkpoint": ck, "model_version": mv,
               "version": version, "current": current.version if current else None,
               "backfill": backfill, "users_published": len(rows), "item_metadata": meta_path,
               "evaluation": evaluation, "warnings": warnings, "timings": times}
    (day_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    log(f"published version {version} ({len(rows)} users)"
        + (" as a backfill (current unchanged)" if backfill else "") + f"; current: {summary['current']}")
    return summary


def run_compare(cfg: DailyJobConfig, as_of_text: str, seeds: Sequence[int], log: Callable[[str], None] = print) -> list[dict]:
    from rayrec.platform.daily.evaluate import compare_ml100k

    as_of = parse_as_of(as_of_text)
    day_dir = Path(cfg.work_dir).resolve() / as_of.isoformat()
    day_dir.mkdir(parents=True, exist_ok=True)
    plan = preprocess_for_date(cfg, as_of, day_dir, log)
    tcfg = train_cfg_for_date(cfg, day_dir)
    tcfg = tcfg.model_copy(update={"data": tcfg.data.model_copy(update={"valid_split": None}),
                                   "run": tcfg.run.model_copy(update={"keep_checkpoints": 1})})
    out = day_dir / "compare"
    rows = compare_ml100k(tcfg, out, seeds=seeds, log=log)
    (out / "windows.json").write_text(json.dumps(plan, indent=1))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    from rayrec.platform.daily.data import DailyDataError
    from rayrec.platform.data import DataError

    p = _cli.parser("daily", __doc__, DailyJobConfig)
    p.add_argument("--as-of", required=True, help="YYYY-MM-DD: the day the recommendations are for")
    p.add_argument("--compare", action="store_true", help="run the seed's comparison table instead")
    p.add_argument("--seeds", default="0,1,2", help="--compare: comma-separated seeds to average")
    p.add_argument("--force", action="store_true",
                   help="publish although the model is below the publish.* floors")
    p.add_argument("--backfill", action="store_true",
                   help="store the date as a version without moving current (needed for an "
                        "as-of older than the current version's)")
    p.add_argument("--only", choices=["preprocess"], default=None,
                   help="preprocess: write <work_dir>/<as-of>/data and stop (e.g. before rayrec.jobs.tune)")
    args = p.parse_args(_cli.argv_or_sys(argv))
    cfg = _cli.load(DailyJobConfig, args, "daily")
    try:
        if args.only == "preprocess":
            as_of = parse_as_of(args.as_of)
            day_dir = Path(cfg.work_dir).resolve() / as_of.isoformat()
            day_dir.mkdir(parents=True, exist_ok=True)
            preprocess_for_date(cfg, as_of, day_dir, print)
            print(f"wrote {day_dir / 'data'}")
        elif args.compare:
            from rayrec.platform.daily.evaluate import table_markdown

            seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
            rows = run_compare(cfg, args.as_of, seeds)
            print(table_markdown(rows, cfg.train.eval.ks))
        else:
            run_daily(cfg, args.as_of, force=args.force, backfill=args.backfill)
    except (DailyJobError, DailyDataError, DataError, ValueError) as exc:
        print(f"rayrec.jobs.daily: error: {exc} (nothing was published)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

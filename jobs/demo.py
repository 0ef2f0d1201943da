"""``python -m rayrec.jobs.demo`` (what ``make demo`` runs)

The main pipeline on the embedded defaults (local Ray, local files), then the composed
product (both recommenders behind one Serve app):

1. preprocess ``../shared/data/rsc15-100k`` on Ray Data when present, otherwise a
   built-in deterministic synthetic session log (said so loudly);
2. evaluate the classic baselines under the ``next_item`` protocol;
3. train GRU4Rec (reference config, shortened) with Ray Train and evaluate it;
4. print one table;
5. serve the trained GRU4Rec with Ray Serve on 127.0.0.1, send one request, print the
   request and the answer, and show the command that keeps the app running;
6. run the daily job (``jobs/configs/daily_ml100k.yaml``, as-of 1998-03-15, shortened) on
   ``../shared/data/ml-100k``: preprocess, train, evaluate, batch predict, publish top-K per
   user into its SQLite store;
7. train GRU4Rec (2 epochs, in this process) on the daily job's own as-of data, so the
   session model and the daily model share one catalog (the same ``items.parquet``);
8. serve BOTH (the session model + the daily store), replay one user's first purchases
   after the as-of date as a live session, and print the user's answer, which blends the
   daily list with the live session, saying which item came from which list.

Steps 6-8 need ``../shared/data/ml-100k`` and are skipped, saying so, without it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from rayrec.jobs import _cli
from rayrec.platform.config import StrictModel

REPO_DATA = Path("../shared/data/rsc15-100k")


class DemoJobConfig(StrictModel):
    data_dir: str = str(REPO_DATA)
    """Where the RSC15 sample lives; the synthetic generator is used when it is absent."""
    out_dir: str = "outputs/demo"
    synthetic_events: int = Field(120_000, ge=1000)
    baselines: list[str] = Field(default_factory=lambda: ["pop", "spop", "item_knn"])
    train_gru4rec: bool = True
    gru4rec_epochs: int = Field(2, ge=1)
    num_cpus: int = 4
    serve: bool = True
    serve_port: int = 8000
    composed: bool = True
    """Steps 6-8: the daily job, a session model on its data, both served, one user request."""
    ml100k_dir: str = "../shared/data/ml-100k"
    as_of: str = "1998-03-15"
    daily_epochs: int | None = Field(None, ge=1)
    """Epochs of the daily model; None: as shipped (15, about a second on ml-100k)."""
    session_epochs: int = Field(2, ge=1)
    """Epochs of the GRU4Rec trained on the daily job's data."""
    k: int = Field(10, ge=1, le=100)


def _step(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _cli.parser("demo", __doc__, DemoJobConfig).parse_args(_cli.argv_or_sys(argv))
    cfg = _cli.load(DemoJobConfig, args, "demo")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from rayrec.platform.config import load_config
    from rayrec.platform.evaluation.runner import evaluate_baselines, format_table
    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.preprocessing.pipeline import run_preprocess
    from rayrec.platform.runtime import init_ray

    t0 = time.perf_counter()
    _step("starting an embedded local Ray")
    init_ray(None, cfg.num_cpus, log_to_driver=False)
    out = Path(cfg.out_dir)
    data_dir = Path(cfg.data_dir)
    _step("1/8 preprocess on Ray Data")
    if (data_dir / "yoochoose-clicks-100k_train_full.txt").is_file():
        print(f"using the public RSC15 sample in {data_dir}")
        overrides = [f"source.paths.{n}={data_dir}/yoochoose-clicks-100k_{n}.txt" for n in
                     ("train_full", "test", "train_tr", "train_valid")]
        pcfg = load_config(
            PreprocessJobConfig, Path(__file__).parent / "configs" / "preprocess_rsc15.yaml",
            overrides + [f"output.path={out / 'data'}", "ray.use_ray=true"],  # the demo shows Ray Data
        )
        dataset = "rsc15-100k"
    else:
        from rayrec.platform.preprocessing.synthetic import generate_events, write_rsc15_style

        print(f"NOTE: {data_dir} not found: using the built-in SYNTHETIC session generator "
              f"({cfg.synthetic_events} events, power-law popularity, Markov sequential structure)")
        src = write_rsc15_style(generate_events(cfg.synthetic_events, n_items=3000, seed=0, days=14), out / "synthetic.tsv")
        pcfg = load_config(
            PreprocessJobConfig, None,
            ["source.format=rsc15_prepared", f"source.path={src}", "split.test_days=1",
             f"output.path={out / 'data'}", "ray.use_ray=true"],
        )
        dataset = "synthetic"
    manifest = run_preprocess(pcfg)
    root = str(out / "data")

    _step("2/8 classic baselines, next_item protocol (full ranking, conservative ties)")
    results = evaluate_baselines(root, "train_full", "test", cfg.baselines)

    if cfg.train_gru4rec:
        try:
            from rayrec.jobs.train import run_training_for_demo
        except ImportError:
            print("GRU4Rec training is not available in this build; skipping")
        else:
            _step(f"3/8 GRU4Rec on Ray Train ({cfg.gru4rec_epochs} epochs of the reference config)")
            res, ckpt = run_training_for_demo(root, out / "runs", cfg.gru4rec_epochs)
            results["gru4rec"] = res
            print(f"checkpoint: {ckpt}")

    _step(f"4/8 results on {dataset}: train_full -> test "
          f"({manifest['split']['splits']['test']['events']} test events)")
    print(format_table(results))
    if cfg.serve and cfg.train_gru4rec and results.get("gru4rec"):
        _step("5/8 Ray Serve: the session recommender on the trained checkpoint")
        from ray import serve

        from rayrec.serve_apps.demo import demo_request

        run_dir = str((out / "runs" / "demo-gru4rec").resolve())
        state = (out / "serve").resolve()
        demo_request(
            {"session": {"model_dir": run_dir, "model": "latest",
                         "store": f"sqlite:///{state}/sessions.db"},
             "events": {"log_dir": str(state / "events")}},
            k=10, port=cfg.serve_port,
        )
    if cfg.composed:
        composed_demo(cfg, out)
    if cfg.serve:
        from ray import serve

        serve.shutdown()
        print("\n(the demo stopped the app; the commands above keep it running)")
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; outputs in {out}/")
    return 0


# ---- steps 6-8: the composed product ----------------------------------------------------
def _short(line: str, width: int = 160) -> None:
    print(line if len(line) <= width else line[: width - 3] + "...", flush=True)


def _titles(ml100k: Path) -> dict[str, str]:
    """MovieLens movie id -> title (``u.item``), empty when the file is absent."""
    f = ml100k / "u.item"
    if not f.is_file():
        return {}
    out = {}
    for line in f.read_text(encoding="latin-1").splitlines():
        parts = line.split("|")
        if len(parts) > 1:
            out[parts[0]] = parts[1]
    return out


def _http(method: str, url: str, body: dict | None = None) -> dict:
    from rayrec.serve_apps.demo import http_json

    return http_json(method, url, body)


def composed_demo(cfg: DemoJobConfig, out: Path) -> None:
    """Steps 6-8 (see the module docstring)."""
    ml = Path(cfg.ml100k_dir)
    if not (ml / "u.data").is_file():
        _step("6-8/8 the daily recommender + blended serving: SKIPPED")
        print(f"NOTE: {ml / 'u.data'} not found: the daily job needs MovieLens 100K "
              "(../shared/data/ml-100k); steps 6-8 are skipped")
        return
    import json

    import pandas as pd

    from rayrec.jobs.daily import run_daily
    from rayrec.platform.config import load_config
    from rayrec.platform.daily.config import DailyJobConfig
    from rayrec.platform.data import load_items, load_split
    from rayrec.platform.store import SQLiteRecommendationStore
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.trainer import fit

    configs = Path(__file__).parent / "configs"
    work = (out / "daily-ml100k").resolve()
    store_path = work / "recs.sqlite"
    overrides = [f"source.path={ml / 'u.data'}", f"work_dir={work}", f"store.path={store_path}",
                 "plot=false"]
    if cfg.daily_epochs is not None:
        overrides.append(f"train.train.epochs={cfg.daily_epochs}")
    dcfg = load_config(DailyJobConfig, configs / "daily_ml100k.yaml", overrides)
    _step(f"6/8 the daily job on MovieLens 100K, as-of {cfg.as_of} "
          f"(jobs/configs/daily_ml100k.yaml, {dcfg.train.train.epochs} epochs, batch predict "
          "on Ray Data)")
    summary = run_daily(dcfg, cfg.as_of, log=_short)
    ev = summary["evaluation"]
    print(f"published version {summary['version']}: top-{dcfg.predict.k} for "
          f"{summary['users_published']} users into {store_path}"
          + (f"; precision@10 on the future window {ev['precision@10']:.4f}"
             if "precision@10" in ev else ""))

    day_data = work / cfg.as_of / "data"
    _step(f"7/8 GRU4Rec on the daily job's own data ({day_data}, jobs/configs/gru4rec_ml100k.yaml), "
          f"{cfg.session_epochs} epochs in this process")
    print("train: split test_x (every purchase before the as-of date of the users it holds, "
          "sessions = 30-minute gaps); validate next-item on test_y (after the as-of date)")
    runs = (out / "runs").resolve()
    tcfg = load_config(TrainJobConfig, configs / "gru4rec_ml100k.yaml", [
        f"data.path={day_data}", f"train.epochs={cfg.session_epochs}",
        f"run.storage_path={runs}", "run.name=demo-gru4rec-ml100k",
    ])
    res = fit(tcfg, log=_short)
    session_items = json.loads(Path(res.checkpoint_dir, "items.json").read_text())
    daily_items = json.loads(Path(summary["checkpoint"], "items.json").read_text())
    shared = len(set(session_items) & set(daily_items))
    same = session_items == daily_items
    print(f"checkpoint: {res.checkpoint_dir}")
    print(f"catalog: session model {len(session_items)} movies, daily model {len(daily_items)}"
          f" movies, {shared} shared" + (" (the identical item index)" if same else ""))

    if not cfg.serve:
        print("serve=false: step 8 (serving both) skipped")
        return
    _step("8/8 Ray Serve: BOTH recommenders (session model + daily store); a user's daily list "
          "blended with a live session")
    from ray import serve

    from rayrec.serve_apps.app import RecommenderArgs, build_app

    state = (out / "serve").resolve()
    state.mkdir(parents=True, exist_ok=True)
    for f in state.glob("sessions-ml100k.db*"):  # a fresh session store per demo run
        f.unlink()
    args = RecommenderArgs.model_validate({
        "session": {"model_dir": str(runs / "demo-gru4rec-ml100k"), "model": "latest",
                    "store": f"sqlite:///{state}/sessions-ml100k.db"},
        "daily": {"store_path": str(store_path)},
        "events": {"log_dir": str(state / "events-ml100k")},
        "blend": {"policy": "interleave"},
    })
    serve.start(http_options={"host": "127.0.0.1", "port": cfg.serve_port})
    port = cfg.serve_port
    try:  # an already running Serve keeps its own HTTP options
        from ray.serve.context import _get_global_client

        port = int(_get_global_client().http_config.port)
    except (ImportError, AttributeError):
        pass
    serve.run(build_app(args), name="recommender", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    print(f"serving on {base}: session.model_dir={args.session.model_dir}, "
          f"daily.store_path={args.daily.store_path}, blend.policy={args.blend.policy}")

    # the user: published by the daily job, with the most purchases after the as-of date;
    # the live session: that user's first three purchases after it, in order
    titles = _titles(ml)
    future = load_split(str(day_data), "test_y", ["user_id", "item_id", "ts"])
    future = future.sort_values(["ts", "item_id"], kind="stable")
    with SQLiteRecommendationStore(store_path) as store:
        order = future["user_id"].value_counts()
        uid = next(u for u in sorted(order.index, key=lambda u: (-order[u], str(u)))
                   if store.get(str(u)) is not None)
        uid = str(uid)
        published = list(store.get(uid).items)
    live = future.loc[future["user_id"] == uid, "item_id"].astype(str).tolist()[:3]
    items = load_items(str(day_data))
    past = pd.read_parquet(day_data / "predict_x.parquet")
    past = past.loc[past["user_id"] == uid].sort_values("ts")
    id_of = dict(zip(items["item_idx"], items["item_id"].astype(str)))
    history = [id_of[int(i)] for i in past["item_idx"].tolist()]

    def name(i: str) -> str:
        return f"{i} {titles.get(i, '')}".strip()

    print(f"\nuser {uid}: {len(history)} purchases before {cfg.as_of}; the last three: "
          + "; ".join(name(i) for i in history[-3:]))
    print(f"live session (the user's first purchases after {cfg.as_of}): "
          + "; ".join(name(i) for i in live))
    sid = f"demo-live-{uid}"
    events = {"events": [{"session_id": sid, "user_id": uid, "item_id": i} for i in live]}
    print(f"\nPOST {base}/events {json.dumps(events)}")
    print(" ->", json.dumps(_http("POST", f"{base}/events", events)))
    url = f"{base}/users/{uid}/recommendations?k={cfg.k}&session_id={sid}"
    print(f"GET {url}")
    ans = _http("GET", url)
    print(" ->", json.dumps(ans))
    # the response says where the whole list came from (source: blend | daily | session |
    # popularity) and, per item, which list gave it (item_sources); the ranks below are read
    # off the published daily list and the session's own list, for the printout
    session_only = _http("GET", f"{base}/sessions/{sid}/recommendations?k={cfg.k}")
    d_rank = {it: r for r, it in enumerate(published, 1)}
    s_rank = {it: r for r, it in enumerate(session_only["items"], 1)}
    print(f"\nanswer for user {uid}: source={ans['source']!r} (daily list + live session), "
          f"daily store version {ans['store_version']}, session model "
          f"{session_only['model']}, {ans['session_events']} session events")
    print(f"{'#':>3}  {'from (item_sources)':<34}  movie")
    for r, (it, src) in enumerate(zip(ans["items"], ans["item_sources"]), 1):
        where = {"daily": f"daily list #{d_rank.get(it, '?')}",
                 "session": f"live session #{s_rank.get(it, '?')}",
                 "session+daily": f"both (daily #{d_rank.get(it, '?')}, session #{s_rank.get(it, '?')})",
                 "popularity": "popularity fill"}.get(src, src)
        print(f"{r:>3}  {where:<34}  {name(it)}")
    counts = {k: ans["item_sources"].count(k) for k in ("daily", "session", "session+daily", "popularity")}
    print(f"{counts['daily']} of {len(ans['items'])} from the daily list (published top-{len(published)}, "
          f"consumed items removed), {counts['session']} from the live session's GRU4Rec list, "
          f"{counts['session+daily']} in both, {counts['popularity']} popularity fill")
    print("keep both running: serve run serve_apps/configs/recommender.yaml with its args "
          f"session.model_dir: {args.session.model_dir} and daily.store_path: {store_path}")


if __name__ == "__main__":
    sys.exit(main())

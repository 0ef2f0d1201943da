"""The SHIPPED configs chained in the README's order: preprocess
(``jobs/configs/preprocess_rsc15.yaml``) -> train (``jobs/configs/gru4rec_rsc15.yaml``) ->
daily (``jobs/configs/daily_ml100k.yaml --as-of 1998-03-15``) -> the session model Serve
blends with it (``jobs/configs/gru4rec_ml100k.yaml``, on the daily job's data) -> serve
(``serve_apps/configs/recommender.yaml``, its ``applications[0].args`` exactly as shipped) ->
a session request and a user request.  A path or key that one step writes and the next
reads differently fails here.

Every path in the shipped configs is relative to the repository root (``outputs/...``,
``runs/...``, ``../shared/data/...``).  The tests run from a throw-away work directory laid
out like a checkout, so those paths resolve the way they do in the repo without writing
anything into it::

    T/repo/jobs -> <repo>/jobs          (the shipped configs, read in place)
    T/repo/outputs, T/repo/runs         (written by the jobs)
    T/shared/data -> ../shared/data     (the public datasets, read-only)

* :func:`test_shipped_paths_chain` (fast, no training): the configs loaded with rayrec's
  typed loaders, and every path one step writes resolved with rayrec's own functions and
  compared with the path the next step reads.
* :func:`test_shipped_session_and_daily_models_share_a_catalog` (fast): the session model
  and the daily store the shipped Serve config blends come from one dataset (the session
  model trains on the daily job's own data directory, so one ``items.parquet``).
* :func:`test_readme_order_end_to_end` (slow, ~3 min on 2 loaded cores): the jobs run as
  subprocesses (``python -m rayrec.jobs.<job>``, shortened with overrides that touch no path)
  and the app is started with ``serve run <copy of recommender.yaml> --address local`` in the
  work directory, as the README does in the repo.  Serve is NOT started on the shared test
  Ray (``conftest.ray_session``): Ray workers keep the working directory of the process that
  started Ray, so on the shared Ray the shipped relative paths would resolve against the
  pytest directory instead of the work directory.  Only the HTTP port differs from the
  shipped YAML.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import SHARED_DATA, data_path
from tests.fixtures import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "jobs" / "configs"
SERVE_YAML = REPO / "serve_apps" / "configs" / "recommender.yaml"
PREPROCESS_YAML = "jobs/configs/preprocess_rsc15.yaml"
TRAIN_YAML = "jobs/configs/gru4rec_rsc15.yaml"
DAILY_YAML = "jobs/configs/daily_ml100k.yaml"
SESSION_YAML = "jobs/configs/gru4rec_ml100k.yaml"
AS_OF = "1998-03-15"
K = 10

# ---- the work directory -----------------------------------------------------------------
def _work_dir(tmp: Path) -> Path:
    """``tmp/repo`` (the cwd of every step) with ``jobs`` linked in and ``tmp/shared/data``
    linked to the public datasets, so the shipped relative paths resolve."""
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "jobs").symlink_to(REPO / "jobs", target_is_directory=True)
    (tmp / "shared").mkdir()
    (tmp / "shared" / "data").symlink_to(SHARED_DATA.resolve(), target_is_directory=True)
    return repo


def _shipped_serve_args() -> dict:
    cfg = yaml.safe_load(SERVE_YAML.read_text())
    (app,) = cfg["applications"]
    assert app["import_path"] == "rayrec.serve_apps.app:build_app"
    return app["args"]


def _shipped_configs():
    """The shipped configs through rayrec's typed loaders (no overrides): preprocess, train
    (rsc15), daily, the session model Serve blends, and the Serve args."""
    from rayrec.platform.config import load_config
    from rayrec.platform.daily.config import DailyJobConfig
    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.serve_apps.config import RecommenderArgs

    pre = load_config(PreprocessJobConfig, REPO / PREPROCESS_YAML)
    train = load_config(TrainJobConfig, REPO / TRAIN_YAML)
    daily = load_config(DailyJobConfig, REPO / DAILY_YAML)
    session = load_config(TrainJobConfig, REPO / SESSION_YAML)
    args = RecommenderArgs.model_validate(_shipped_serve_args())
    return pre, train, daily, session, args


def _res(p: str) -> Path:
    """A config path as a job started in the current directory opens it."""
    return Path(p).resolve()


# ---- fast: the chain of paths, no training ------------------------------------------------
def test_shipped_paths_chain(tmp_path, monkeypatch):
    """Every path a shipped step writes is the path the next shipped step reads (resolved in
    a checkout-like work directory with rayrec's own path functions)."""
    from rayrec.platform.training.trainer import run_dir

    repo = _work_dir(tmp_path)
    monkeypatch.chdir(repo)
    pre, train, daily, session, args = _shipped_configs()

    # preprocess -> train: the output directory and the split names
    assert _res(pre.output.path) == _res(train.data.path), (
        f"{PREPROCESS_YAML} output.path={pre.output.path} but {TRAIN_YAML} "
        f"data.path={train.data.path}")
    assert pre.split.name == "predefined"
    written = set(pre.source.paths or {})
    for key in ("train_split", "valid_split", "test_split"):
        name = getattr(train.data, key)
        assert name is None or name in written, (
            f"{TRAIN_YAML} data.{key}={name!r}: {PREPROCESS_YAML} writes splits {sorted(written)}")
    # the item index is built on split.index_split; RSC15's prepared train_tr is train_full
    # without its last day, so the train_full index covers both training splits
    assert pre.split.index_split == "train_full" and train.data.train_split in ("train_full", "train_tr"), (
        f"the item index is built on split.index_split={pre.split.index_split}; the model trains "
        f"on data.train_split={train.data.train_split}")
    # model selection never looks at the test split (finding 10 of the first-user report)
    assert train.data.valid_split != "test" and train.data.valid_split == "train_valid"

    # daily -> the session model: it trains on the daily job's data directory for the date
    day_data = Path(daily.work_dir) / AS_OF / "data"
    assert _res(session.data.path) == _res(str(day_data)), (
        f"{SESSION_YAML} data.path={session.data.path} but {DAILY_YAML} writes its data for "
        f"{AS_OF} to work_dir/<as-of>/data={day_data}")
    windows = {f"{p}_{xy}" for p in ("train", "valid_train", "valid_test", "test") for xy in "xy"}
    for key in ("train_split", "valid_split", "test_split"):
        name = getattr(session.data, key)
        assert name is None or name in windows, (
            f"{SESSION_YAML} data.{key}={name!r}: the daily job writes {sorted(windows)}")

    # the session model -> serve: the run directory holds the checkpoints Serve loads
    assert session.run.checkpoint and train.run.checkpoint
    assert _res(args.session.model_dir) == Path(run_dir(session)), (
        f"{SERVE_YAML.name} session.model_dir={args.session.model_dir} but {SESSION_YAML} "
        f"writes its checkpoints to run.storage_path/run.name={run_dir(session)}")
    assert args.session.model == "latest" or args.session.model.startswith("checkpoint_"), (
        "session.model must name what training writes (checkpoint_<epoch>) or be 'latest'")

    # daily -> serve: the store the daily job publishes into is the store Serve reads
    assert args.daily.store_path is not None, "the shipped app serves no daily store"
    assert _res(daily.store.path) == _res(args.daily.store_path), (
        f"{DAILY_YAML} store.path={daily.store.path} but {SERVE_YAML.name} "
        f"daily.store_path={args.daily.store_path}")
    assert daily.train.model.name == "daily_nn"

    # everything the jobs write stays inside the checkout; the inputs are the shared data
    for p in (pre.output.path, run_dir(train), run_dir(session), daily.work_dir, daily.store.path):
        assert _res(str(p)).is_relative_to(repo.resolve()), f"{p} is written outside the repo"
    shared = (tmp_path / "shared" / "data").resolve()
    for p in [*(pre.source.paths or {}).values(), daily.source.path]:
        assert _res(p).is_relative_to(shared), f"{p} is not under ../shared/data"


def test_shipped_sources_are_the_shared_datasets(tmp_path, monkeypatch):
    """The shipped inputs exist where ``../shared/data`` points (skips without the data)."""
    data_path("rsc15-100k")
    data_path("ml-100k")
    repo = _work_dir(tmp_path)
    monkeypatch.chdir(repo)
    pre, _, daily, _, _ = _shipped_configs()
    for p in [*(pre.source.paths or {}).values(), daily.source.path]:
        assert Path(p).is_file(), f"shipped input {p} not found from the repo root"


def test_shipped_session_and_daily_models_share_a_catalog(tmp_path, monkeypatch):
    """The user endpoint blends the daily list with the live session's list: both must come
    from one catalogue.  Traced through the configs: session.model_dir -> the training run
    -> its data.path, which is the daily job's data directory (one items.parquet, built
    from the daily job's source)."""
    from rayrec.platform.training.trainer import run_dir

    repo = _work_dir(tmp_path)
    monkeypatch.chdir(repo)
    _, _, daily, session, args = _shipped_configs()
    assert _res(args.session.model_dir) == Path(run_dir(session))
    assert _res(session.data.path).is_relative_to(_res(daily.work_dir)), (
        f"the served session model trains on {session.data.path}, not on the daily job's "
        f"data under {daily.work_dir}: two catalogues would be blended")


# ---- slow: the whole chain, as the README runs it ---------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # never join someone else's cluster
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    return env


def _job(repo: Path, log: Path, *argv: str, timeout: float = 600) -> str:
    """``python -m rayrec.jobs.<job> ...`` in ``repo``; its output, or a failure with it."""
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", *argv], cwd=repo, env=_env(), text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    log.write_text(p.stdout)
    assert p.returncode == 0, f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout[-4000:]}"
    print(f"{argv[0]}: {time.time() - t0:.0f}s")
    return p.stdout


def _http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"detail": exc.read().decode(errors="replace")}


def _stop(proc: subprocess.Popen) -> None:
    """Stop ``serve run`` (Ctrl-C: it shuts the app and its local Ray down), then its
    process group if anything of it is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    def group_gone() -> bool:
        proc.poll()  # reap the leader, or the group stays visible
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if group_gone():
            break
        os.killpg(proc.pid, sig)
        try:
            wait_for(group_gone, wait, "serve run's process group to exit")
            break
        except TimeoutError:
            continue


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_readme_order_end_to_end(tmp_path):
    """preprocess -> train -> daily -> ``serve run`` with the shipped configs (shortened,
    paths untouched) -> a session request and a user request; the answers must come from
    what the jobs wrote (the trained checkpoint, the published store version)."""
    data_path("rsc15-100k", "yoochoose-clicks-100k_train_full.txt")
    data_path("ml-100k", "u.data")
    from rayrec.platform.store import SQLiteRecommendationStore

    repo = _work_dir(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()

    # 1. preprocess (in this process's way: no Ray; the shipped output.path)
    _job(repo, logs / "preprocess.log", "rayrec.jobs.preprocess", "-c", PREPROCESS_YAML,
         "ray.use_ray=false")
    # 2. train, shortened (epochs and steps only; run.name / storage_path / data.path as shipped)
    _job(repo, logs / "train.log", "rayrec.jobs.train", "-c", TRAIN_YAML, "ray.use_ray=false",
         "train.epochs=1", "train.max_steps_per_epoch=5")
    # 3. the daily job, shortened (one epoch, predictions in this process, no plot)
    _job(repo, logs / "daily.log", "rayrec.jobs.daily", "-c", DAILY_YAML, "--as-of", AS_OF,
         "train.train.epochs=1", "ray.use_ray=false", "plot=false")
    # 4. the session model Serve blends with it, on the daily job's data (shortened)
    _job(repo, logs / "train_session.log", "rayrec.jobs.train", "-c", SESSION_YAML,
         "train.epochs=1")

    shipped = _shipped_serve_args()
    summary = json.loads((repo / "outputs" / "daily-ml100k" / AS_OF / "summary.json").read_text())
    assert Path(summary["checkpoint"]).resolve().is_relative_to(repo.resolve())

    # 5. serve: the shipped YAML, only the port changed
    cfg = yaml.safe_load(SERVE_YAML.read_text())
    port = free_port()
    cfg["http_options"]["port"] = port
    assert cfg["applications"][0]["args"] == shipped
    serve_yaml = tmp_path / "recommender.yaml"
    serve_yaml.write_text(yaml.safe_dump(cfg, sort_keys=False))
    serve_bin = Path(sys.executable).parent / "serve"
    assert serve_bin.is_file(), f"no `serve` CLI next to {sys.executable}"
    serve_log = logs / "serve.log"
    base = f"http://127.0.0.1:{port}"
    t0 = time.time()
    with serve_log.open("w") as fh:
        proc = subprocess.Popen([str(serve_bin), "run", str(serve_yaml), "--address", "local"],
                                cwd=repo, env=_env(), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def up() -> dict | None:
            if proc.poll() is not None:
                raise AssertionError(f"serve run exited {proc.poll()}:\n{serve_log.read_text()[-6000:]}")
            status, body = _http("GET", f"{base}/versions")
            return body if status == 200 else None

        try:
            versions = wait_for(up, 420, "GET /versions 200", every=2, ignore=(OSError,))
        except TimeoutError as exc:
            raise AssertionError(f"the app did not come up: {exc}\n{serve_log.read_text()[-6000:]}") from None
        print(f"serve run: up in {time.time() - t0:.0f}s")

        # what the app says it serves is what the jobs wrote
        assert list((repo / "runs" / "gru4rec-rsc15").glob("checkpoint_*")), \
            "the rsc15 training wrote no checkpoint under runs/gru4rec-rsc15"
        ckpts = sorted((repo / "runs" / "gru4rec-ml100k").glob("checkpoint_*"))
        assert ckpts, "training wrote no checkpoint under runs/gru4rec-ml100k"
        sm = versions["session_model"]
        assert Path(sm["path"]).resolve() == ckpts[-1].resolve(), sm
        store_path = repo / "outputs" / "daily-ml100k" / "recs.sqlite"
        with SQLiteRecommendationStore(store_path) as store:
            current = store.current()
            assert current is not None and current.version == summary["version"]
            assert versions["daily_store"]["current"] == current.version, versions["daily_store"]
            import pandas as pd

            users = pd.read_parquet(repo / "outputs" / "daily-ml100k" / AS_OF / "data" /
                                    "predict_x.parquet", columns=["user_id"])["user_id"]
            uid = next(u for u in sorted(set(users.astype(str)), key=lambda u: (len(u), u))
                       if store.get(u) is not None)
            published = list(store.get(uid).items)

        # a user the daily job published: the daily list, from the published version
        status, body = _http("GET", f"{base}/users/{uid}/recommendations?k={K}")
        assert status == 200, body
        assert body["source"] == "daily", (
            f"user {uid} answered from {body['source']!r}: the app does not read the store the "
            f"daily job published ({store_path})")
        assert body["store_version"] == current.version
        it = iter(published)
        assert all(i in it for i in body["items"]), (body["items"], published)  # ordered subset

        # a live session: scored by the trained session model
        catalog = json.loads((ckpts[-1] / "items.json").read_text())
        sid = f"readme-{uuid.uuid4().hex[:12]}"
        events = [{"session_id": sid, "user_id": uid, "item_id": i} for i in catalog[5:8]]
        status, out = _http("POST", f"{base}/events", {"events": events})
        assert status == 200 and out["accepted"] == 3, out
        status, srec = _http("GET", f"{base}/sessions/{sid}/recommendations?k={K}")
        assert status == 200, srec
        assert srec["source"] == "session" and srec["model"] == ckpts[-1].name, srec
        assert len(srec["items"]) == K and set(srec["items"]) <= set(catalog)
        assert srec["session_events"] == 3

        # the user with the live session: the daily list blended with the session's
        status, blend = _http("GET", f"{base}/users/{uid}/recommendations?k={K}&session_id={sid}")
        assert status == 200, blend
        assert blend["source"] == "blend" and blend["store_version"] == current.version, blend
        assert set(blend["items"]) & set(published) and set(blend["items"]) & set(srec["items"])
        # one catalogue: every daily item is an item of the session model
        assert set(published) <= set(catalog), sorted(set(published) - set(catalog))[:5]
        assert set(blend["item_sources"]) <= {"daily", "session", "session+daily", "popularity"}
        print(f"blend for user {uid}: {list(zip(blend['items'], blend['item_sources']))}")
    finally:
        _stop(proc)

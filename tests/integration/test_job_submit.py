"""``ray job submit`` against a real local head, for every job: the code ships with the job.

The head runs in its own process group with its own ports and temp dir (so no other
test or ``ray.init()`` on this machine attaches to it) and is stopped at the end.

The code travels as the built wheel's ``rayrec/`` package directory in ``py_modules``, not
the ``.whl`` file itself: Ray installs a ``py_modules`` wheel with ``pip install --target``
and no ``--no-deps``, which resolves rayrec's whole dependency list into the job's path
(measured: 2 minutes and 6.1 GB, with a torch build other than the cluster's pinned one
shadowing it).  The package directory is zipped and uploaded as is.

Fast tier: preprocess, which code a job imports, train -> evaluate, a 2-trial random-search
tune.  Slow: daily -> batch_predict on MovieLens 100K.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.fixtures import free_port


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("head")
    wheel_dir = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheel_dir), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("rayrec-*.whl"))
    pkg = tmp / "pkg"  # the wheel's files; py_modules gets pkg/rayrec (see the module docstring)
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(pkg)
    port, dash = free_port(), free_port()
    # the session's shared local Ray already holds the default agent ports: use free ones
    agent_ports = [
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
    ]
    temp_dir = Path("/tmp") / f"rayrec-jt-{os.getpid()}"
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    head_log = tmp / "head.log"  # a file, not a pipe nobody reads: a full pipe blocks `ray start`
    with head_log.open("wb") as log_fh:
        proc = subprocess.Popen(
            [ray_bin, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
             "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=true", *agent_ports],
            env=env, start_new_session=True, stdout=log_fh, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", dash), timeout=1):
                break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"local Ray head did not start:\n{head_log.read_text(errors='replace')[-3000:]}")
    yield {"url": url, "package": pkg / "rayrec", "env": env, "tmp": tmp}
    os.killpg(proc.pid, signal.SIGTERM)
    try:  # `ray start --block` takes 30-35 s to wind down after SIGTERM; a test head need not
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    shutil.rmtree(temp_dir, ignore_errors=True)  # session logs and unpacked runtime envs


def submit(head, *entrypoint: str, timeout: int = 600) -> str:
    """``ray job submit`` of ``entrypoint`` with the rayrec package in ``py_modules`` (no
    working_dir); returns the job's logs, asserting it succeeded."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    runtime_env = {"py_modules": [str(head["package"])],
                   "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "DS_ACCELERATOR": "cpu"}}
    cmd = [ray_bin, "job", "submit", "--address", head["url"], "--runtime-env-json", json.dumps(runtime_env),
           "--", *entrypoint]
    deadline = time.time() + 120
    while True:  # the head answers HTTP before its job agent is up: retry that case only
        res = subprocess.run(cmd, env=head["env"], capture_output=True, text=True, timeout=timeout)
        logs = res.stdout + res.stderr
        if res.returncode == 0 or "No available agent" not in logs or time.time() > deadline:
            break
        time.sleep(3)
    assert res.returncode == 0, logs[-3000:]
    assert "succeeded" in logs.lower()
    return logs


def submit_job(head, module: str, *args: str) -> str:
    """``python -m rayrec.jobs.<module> args`` through :func:`submit`."""
    logs = submit(head, sys.executable, "-m", f"rayrec.jobs.{module}", *args)
    assert f"rayrec.jobs.{module}: resolved config" in logs  # the job's own log lines came back
    return logs


def test_submit_preprocess_job_and_read_result_and_logs(head):
    from tests.conftest import data_path

    data = data_path("rsc15-100k")
    out = head["tmp"] / "out"
    logs = submit_job(
        head, "preprocess", "-c", str(REPO / "jobs/configs/preprocess_rsc15.yaml"), f"output.path={out}",
        *[f"source.paths.{n}={data}/yoochoose-clicks-100k_{n}.txt" for n in ("train_full", "test", "train_tr", "train_valid")],
    )
    assert "train_full" in logs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"]["splits"]["train_full"]["sessions"] == 17_794


def test_job_imports_the_shipped_package_and_the_clusters_stack(head):
    """The job ran the shipped package (not the repo's editable install) on the cluster's own
    torch/ray (nothing installed over them)."""
    import ray
    import torch

    code = ("import rayrec, rayrec.platform.config as c, ray, torch; "
            "print('ORIGIN', rayrec.__file__, c.__file__, ray.__version__, torch.__version__)")
    logs = submit(head, sys.executable, "-c", code)
    line = next(ln for ln in logs.splitlines() if ln.startswith("ORIGIN "))
    pkg_init, cfg_file, ray_v, torch_v = line.split()[1:]
    assert "runtime_resources" in pkg_init and "runtime_resources" in cfg_file, line
    assert not pkg_init.startswith(str(REPO)) and not cfg_file.startswith(str(REPO))
    assert (ray_v, torch_v) == (ray.__version__, torch.__version__)


@pytest.fixture(scope="module")
def sessions_data(tmp_path_factory):
    """A small preprocessed session dataset (train_full/test, train_tr/train_valid)."""
    from tests.fixtures import synthetic_sessions

    return synthetic_sessions(tmp_path_factory.mktemp("jobdata"), n_events=6000, n_items=200)


def test_submit_train_then_evaluate_jobs(head, sessions_data):
    runs = head["tmp"] / "runs"
    logs = submit_job(
        head, "train", "-c", str(REPO / "jobs/configs/gru4rec_rsc15.yaml"), f"data.path={sessions_data}",
        "train.epochs=1", "train.max_steps_per_epoch=30", "train.batch_size=16",
        "model.loss.n_sample=64", "model.layers=[32]", "scaling.num_workers=1", "scaling.cpus_per_worker=1",
        f"run.storage_path={runs}", "run.name=submitted",
    )
    ck = re.search(r"^checkpoint: (\S+)$", logs, re.M)
    assert ck and "final metrics" in logs, logs[-3000:]
    ck_dir = Path(ck.group(1))
    assert ck_dir.parent == runs / "submitted" and (ck_dir / "model.pt").is_file()
    meta = json.loads((ck_dir / "meta.json").read_text())
    assert meta["epoch"] == 1 and meta["metrics"]["protocol"] == "next_item"

    out = head["tmp"] / "eval.json"
    logs = submit_job(head, "evaluate", f"data.path={sessions_data}", "baselines=[pop]",
                      f"checkpoints={{gru: {ck_dir}}}", f"output={out}")
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"pop", "gru"}
    assert res["gru"]["checkpoint"] == str(ck_dir) and 0 < res["gru"]["recall@20"] <= 1
    assert res["gru"]["protocol"] == res["pop"]["protocol"] == "next_item"
    assert "recall@20" in logs  # the printed table came back in the job's logs


@pytest.mark.slow
def test_submit_daily_then_batch_predict_jobs(head):
    from rayrec.platform.store import SQLiteRecommendationStore
    from tests.conftest import data_path

    udata = data_path("ml-100k", "u.data")
    work, store_path = head["tmp"] / "daily", head["tmp"] / "daily" / "recs.sqlite"
    submit_job(
        head, "daily", "-c", str(REPO / "jobs/configs/daily_ml100k.yaml"), "--as-of", "1998-03-15",
        f"source.path={udata}", f"work_dir={work}", f"store.path={store_path}", "train.train.epochs=1",
        "plot=false",
    )
    summary = json.loads((work / "1998-03-15" / "summary.json").read_text())
    assert summary["users_published"] > 0 and summary["current"] == summary["version"]
    ev = summary["evaluation"]
    assert ev["protocol"] == "future_window" and 0 <= ev["precision@10"] <= 1  # Z window evaluated

    # batch_predict: the same checkpoint and input under another model version -> a new version
    submit_job(
        head, "batch_predict", f"checkpoint={summary['checkpoint']}", f"data_path={work / '1998-03-15' / 'data'}",
        "as_of=1998-03-15", "model_version=resubmitted", f"store.path={store_path}",
    )
    users = sorted(pd.read_parquet(work / "1998-03-15" / "data" / "predict_x.parquet")["user_id"].unique())
    with SQLiteRecommendationStore(store_path) as store:
        assert {summary["version"], "1998-03-15-resubmitted"} <= {v.version for v in store.versions()}
        cur = store.current()
        assert cur.version == "1998-03-15-resubmitted" and cur.n_rows == summary["users_published"]
        first = store.get_many(users[:50], version=summary["version"])
        again = store.get_many(users[:50], version=cur.version)
    assert len(first) == 50 and first.keys() == again.keys()
    assert all(again[u].items == first[u].items for u in first)  # same model and input, same lists


def test_submit_tune_random_two_trials(head, sessions_data):
    storage = head["tmp"] / "tune"
    base = [f"data.path={sessions_data}", "data.train_split=train_tr", "data.valid_split=train_valid",
            "train.epochs=1", "train.max_steps_per_epoch=20", "train.batch_size=16",
            "model.loss.n_sample=64"]
    logs = submit_job(
        head, "tune", "-c", str(REPO / "jobs/configs/tune_gru4rec_random.yaml"),
        f"base_config={REPO / 'jobs/configs/gru4rec_rsc15.yaml'}", f"base_overrides=[{', '.join(base)}]",
        "num_samples=2", "max_concurrent=2", "cpus_per_trial=1", f"run.storage_path={storage}",
        "run.name=submitted",
    )
    summary = json.loads((storage / "submitted" / "summary.json").read_text())
    assert summary["method"] == "random" and summary["n_trials"] == 2
    assert all(t["epoch"] == 1 for t in summary["trials"])
    assert len({json.dumps(t["config"], sort_keys=True) for t in summary["trials"]}) == 2  # 2 points
    assert Path(summary["best_config_yaml"]).is_file()
    assert 0 < summary["final"]["recall@20"] <= 1  # retrained best config, evaluated once on test
    assert "final (train_full -> test" in logs

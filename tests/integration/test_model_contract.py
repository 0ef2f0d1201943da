"""The model contract, proven end to end by a test-only model (``tests/toy_model.py``).

The toy model is one file that registers a :class:`rayrec.models.registry.ModelSpec`; no
platform file knows it.  With it, and nothing else:

* it trains in this process (``ray.use_ray=false``), its loss falls, a re-run resumes;
* it trains on 2 Ray Train workers (DDP) to a checkpoint, and re-running the same
  ``run.name`` with more epochs continues at the next epoch;
* a 2-trial Tune run (random search) finishes and writes a ``best_config.yaml`` that validates;
* the evaluate job scores its checkpoint under the ``next_item`` protocol (in this process,
  and as a CLI process given ``RAYREC_MODEL_MODULES=tests.toy_model``);
* the Serve session deployment serves it over HTTP, equal to the offline top-K.

How the plug-in module reaches other processes: the training driver and Tune pass
``registry.plugin_modules()`` (``["tests.toy_model"]``) to their workers, which import it;
Ray workers of the shared test Ray have the driver's working directory (the repository root,
where pytest runs) on ``sys.path``, so ``tests.toy_model`` imports there
(:func:`test_plugin_module_reaches_ray_workers` checks it first).  CLI processes and Serve
replicas import it through ``RAYREC_MODEL_MODULES`` (the replicas get it in
``replica_env``).
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rayrec.models import registry
from rayrec.models.contract import ServableScorer, SessionScorer
from rayrec.platform.checkpoint import load_model
from rayrec.platform.config import load_config
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.trainer import fit
from tests.fixtures import free_port, synthetic_sessions, wait_for

REPO = Path(__file__).resolve().parents[2]


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module", autouse=True)
def toy():
    """The test-only model, registered for this module's tests only: imported here rather
    than at collection, and unregistered afterwards, so no other test module of the session
    sees it in the registry or forwards it to its workers."""
    mod = importlib.import_module("tests.toy_model")
    registry.register(mod.SPEC)  # again, if an earlier run of this fixture unregistered it
    yield mod
    registry.MODELS.pop(mod.NAME, None)
    registry.PLUGIN_MODULES.pop(mod.__name__, None)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_sessions(tmp_path_factory.mktemp("toy"), n_events=2000, n_items=50)


def _job(root, storage, name, *extra) -> TrainJobConfig:
    return load_config(TrainJobConfig, None, [
        "model.name=toy_last_item", "model.dim=8", f"data.path={root}",
        "data.train_split=train_full", "data.valid_split=test", "eval.ks=[5,20]",
        f"run.storage_path={storage}", f"run.name={name}", *extra])


def _checkpoint_epochs(run_dir) -> list[int]:
    return sorted(int(json.loads(p.read_text())["epoch"])
                  for p in Path(run_dir).glob("checkpoint_*/meta.json"))


@pytest.fixture(scope="module")
def trained(toy, data_root, tmp_path_factory):
    """A toy checkpoint trained in this process (4 epochs)."""
    storage = tmp_path_factory.mktemp("toy-runs")
    res = fit(_job(data_root, storage, "local", "ray.use_ray=false", "train.epochs=4"), log=_quiet)
    return res


# ---- registry ---------------------------------------------------------------------------
def test_toy_model_is_registered_as_a_plugin(toy):
    spec = registry.get("toy_last_item")
    assert spec is toy.SPEC and spec.kind == "session" and spec.metrics == "next_item"
    assert spec.trainable and spec.parallelism == "data"
    assert "tests.toy_model" in registry.plugin_modules()
    # job_defaults sit between the platform's defaults and the YAML / overrides
    job = _job("x", "y", "z")
    assert job.optim.name == "adam" and job.optim.lr == 0.05 and job.train.batch_size == 64
    assert _job("x", "y", "z", "optim.lr=0.01").optim.lr == 0.01
    # the model file imports nothing of the platform, serving or jobs (lazy imports count)
    tree = ast.parse(Path(toy.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {"rayrec.models", "rayrec.ops_kernels"} <= imported  # registry, topk_scores
    bad = [m for m in imported for layer in ("rayrec.platform", "rayrec.serve_apps", "rayrec.jobs")
           if m == layer or m.startswith(layer + ".")]
    assert not bad, bad


# ---- in-process training ----------------------------------------------------------------
def test_trains_in_process_loss_falls_and_resumes(toy, trained, data_root, tmp_path):
    losses = [h["loss"] for h in trained.history]
    assert [h["epoch"] for h in trained.history] == [1, 2, 3, 4]
    assert losses[-1] < 0.85 * losses[0], losses
    m = trained.metrics
    assert m["protocol"] == "next_item" and m["world_size"] == 1 and m["n"] > 0
    assert 0.0 <= m["recall@20"] <= 1.0 and m["train_pairs_rank0"] == m["examples"]
    assert _checkpoint_epochs(trained.run_dir) == [3, 4]  # run.keep_checkpoints=2
    loaded = load_model(trained.checkpoint_dir, kind="session")
    assert isinstance(loaded.model, toy.ToyLastItem)
    assert isinstance(loaded.scorer(), ServableScorer) and isinstance(loaded.scorer(), SessionScorer)
    # re-running the same run.name with more epochs continues at the next epoch (another
    # run than the module's checkpoint, which later tests evaluate and serve)
    # The loop draws each epoch's data order from (seed, epoch), so the resumed epoch 3 must
    # equal epoch 3 of an uninterrupted run exactly (weights, Adam state and order restored).
    def run(name, epochs):
        logs: list[str] = []
        res = fit(_job(data_root, tmp_path, name, "ray.use_ray=false", "train.shuffle=true",
                       f"train.epochs={epochs}"), log=logs.append)
        return res, logs

    ref, _ = run("straight", 3)
    first, _ = run("again", 2)
    more, logs = run("again", 3)
    assert [h["epoch"] for h in first.history] == [1, 2]
    # history is the whole run's; only epoch 3 was trained by the second call
    assert [h["epoch"] for h in more.history] == [1, 2, 3]
    assert [m.split()[1] for m in logs if m.startswith("epoch ")] == ["3/3"]
    assert more.history[:2] == first.history
    assert more.history[2]["loss"] == pytest.approx(ref.history[2]["loss"], rel=1e-9)
    assert _checkpoint_epochs(more.run_dir) == [2, 3]
    a = load_model(ref.checkpoint_dir).checkpoint.model_state
    b = load_model(more.checkpoint_dir).checkpoint.model_state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- other processes --------------------------------------------------------------------
def test_plugin_module_reaches_ray_workers(toy, ray_session):
    """What Ray Train workers, Tune trials and Serve replicas rely on: ``tests.toy_model``
    imports in a Ray worker (the driver's working directory is on its ``sys.path``), and
    ``RAYREC_MODEL_MODULES`` makes the registry import it (Serve replicas)."""
    ray = ray_session
    assert Path.cwd().resolve() == REPO, (
        f"run pytest from the repository root ({REPO}): Ray workers get the driver's working "
        "directory on sys.path, and the plug-in module is imported there as tests.toy_model")

    @ray.remote(num_cpus=0)
    def import_plugin(modules):
        from rayrec.models import registry as reg

        reg.import_modules(modules)
        return sys.modules["tests.toy_model"].__file__, reg.get("toy_last_item").name

    @ray.remote(num_cpus=0, runtime_env={"env_vars": {"RAYREC_MODEL_MODULES": "tests.toy_model"}})
    def by_env():
        from rayrec.models import registry as reg

        return reg.get("toy_last_item").config_cls.__module__

    path, name = ray.get(import_plugin.remote(registry.plugin_modules()), timeout=120)
    assert Path(path).resolve() == Path(toy.__file__).resolve() and name == "toy_last_item"
    assert ray.get(by_env.remote(), timeout=120) == "tests.toy_model"


def test_ray_train_two_ddp_workers_then_resume(toy, ray_session, data_root, tmp_path):
    ray_args = ("scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "scaling.engine=ddp")
    res = fit(_job(data_root, tmp_path, "ddp", *ray_args, "train.epochs=2"), log=_quiet)
    assert res.metrics["epoch"] == 2 and res.metrics["world_size"] == 2
    assert res.metrics["protocol"] == "next_item" and res.metrics["n"] > 0
    assert len(res.metrics["peak_rss_mb_per_rank"]) == 2  # gathered from both ranks
    assert res.checkpoint_dir and Path(res.checkpoint_dir, "model.pt").is_file()
    assert _checkpoint_epochs(res.run_dir) == [1, 2]
    assert isinstance(load_model(res.checkpoint_dir, kind="session").model, toy.ToyLastItem)
    # both ranks trained on their own shard: the epoch saw all pairs of the split once
    pairs = toy.training_pairs(*_split(data_root, "train_full"))[0].size
    assert res.metrics["examples"] == pairs
    # resume: the same run.name with more epochs continues at epoch 3 (epochs 1-2 are not
    # trained again: the epoch-2 checkpoint of the first run is still the run's, untouched)
    ck2 = Path(res.checkpoint_dir)
    ck2_bytes = (ck2 / "model.pt").read_bytes()
    more = fit(_job(data_root, tmp_path, "ddp", *ray_args, "train.epochs=3"), log=_quiet)
    assert more.metrics["epoch"] == 3 and more.metrics["world_size"] == 2
    assert _checkpoint_epochs(more.run_dir) == [2, 3]
    assert ck2.is_dir() and (ck2 / "model.pt").read_bytes() == ck2_bytes
    assert Path(more.checkpoint_dir) != ck2
    # history is the whole run's (epochs 1-2 from the restored checkpoint, then epoch 3)
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert [h["epoch"] for h in more.history] == [1, 2, 3]
    assert more.history[1]["loss"] == pytest.approx(res.history[-1]["loss"])
    assert more.metrics["loss"] < res.history[0]["loss"]


def _split(root, name):
    from rayrec.platform import data as pdata

    a = pdata.session_arrays(root, name)
    return a.offsets, a.items


def test_tune_two_random_trials(toy, ray_session, data_root, tmp_path):
    from rayrec.jobs import tune as tune_job

    base = {
        "model": {"name": "toy_last_item", "dim": 8},
        "data": {"path": data_root, "train_split": "train_tr", "valid_split": "train_valid"},
        "train": {"epochs": 2},
        "eval": {"ks": [20]},
    }
    base_yaml = tmp_path / "base.yaml"
    base_yaml.write_text(yaml.safe_dump(base))
    rc = tune_job.main([
        f"base_config={base_yaml}", "method=random", "num_samples=2", "max_concurrent=2",
        "cpus_per_trial=0.5", "metric=recall@20", f"run.storage_path={tmp_path}", "run.name=toy",
        "final_train_split=null", "space={optim.lr: {type: logfloat, low: 0.005, high: 0.2}}",
    ])
    assert rc == 0
    summary = json.loads((tmp_path / "toy" / "summary.json").read_text())
    assert summary["n_trials"] == 2 and "final" not in summary
    assert all(t["epoch"] == 2 for t in summary["trials"])
    lrs = [t["config"]["optim.lr"] for t in summary["trials"]]
    assert len(set(lrs)) == 2 and all(0.005 <= lr <= 0.2 for lr in lrs)
    assert all(0.0 <= t["recall@20"] <= 1.0 for t in summary["trials"])
    best = load_config(TrainJobConfig, summary["best_config_yaml"])
    assert best.model == toy.ToyLastItemConfig(dim=8)
    assert best.optim.lr == pytest.approx(summary["best_point"]["optim.lr"])
    assert best.data.valid_split == "train_valid"


# ---- evaluation ---------------------------------------------------------------------------
def test_evaluate_job_scores_the_checkpoint(trained, data_root):
    from rayrec.jobs.evaluate import EvaluateJobConfig, run

    cfg = EvaluateJobConfig(
        data={"path": data_root, "train_split": "train_full", "test_split": "test"},
        baselines=["pop"], checkpoints={"toy": trained.checkpoint_dir}, eval={"ks": [5, 20]})
    res = run(cfg, log=_quiet)
    r = res["toy"]
    assert r["protocol"] == "next_item" and r["n"] > 0 and r["n"] == res["pop"]["n"]
    assert 0.0 <= r["recall@20"] <= 1.0 and 0.0 <= r["mrr@20"] <= r["recall@20"]
    assert r["recall@20"] == pytest.approx(trained.metrics["recall@20"])  # same split, same protocol


def test_evaluate_cli_imports_the_plugin_from_env(trained, data_root, tmp_path):
    """A CLI process knows the model only through ``RAYREC_MODEL_MODULES``."""
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "rayrec.jobs.evaluate", f"data.path={data_root}",
           "data.train_split=train_full", "data.test_split=test", "baselines=[]",
           f"checkpoints={{toy: {trained.checkpoint_dir}}}", f"output={out}"]
    env = {**os.environ, "RAYREC_MODEL_MODULES": "tests.toy_model", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())["results"]["toy"]
    assert r["protocol"] == "next_item" and r["n"] > 0
    assert r["recall@20"] == pytest.approx(trained.metrics["recall@20"])
    env.pop("RAYREC_MODEL_MODULES")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "toy_last_item" in done.stderr, done.stderr[-2000:]


# ---- serving ------------------------------------------------------------------------------
def test_serve_session_deployment_serves_the_toy_model(ray_session, trained, tmp_path):
    httpx = pytest.importorskip("httpx")
    from ray import serve

    from rayrec.serve_apps.app import RecommenderArgs, build_app

    ck = Path(trained.checkpoint_dir)
    args = RecommenderArgs(
        session={"model_dir": str(ck.parent), "model": ck.name, "replicas": 1, "num_cpus": 0.25,
                 "store": f"sqlite://{tmp_path / 'sessions.db'}"},
        daily={"num_cpus": 0.1}, ingress={"num_cpus": 0.25}, events={"log_dir": None},
        # the replicas are other processes: they import the plug-in through the registry
        replica_env={"RAYREC_MODEL_MODULES": "tests.toy_model",
                     "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"},
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        from ray.serve.context import _get_global_client

        port = int(_get_global_client().http_config.port)  # a running Serve keeps its own
        serve.run(build_app(args), name="toy", route_prefix="/toy")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/toy", timeout=60.0) as c:
            wait_for(lambda: c.get("/health").status_code == 200, 60, "GET /health 200",
                     ignore=(Exception,))
            loaded = load_model(ck, kind="session")
            item_ids, scorer = loaded.item_ids, loaded.scorer()
            sessions = [[3, 7, 11], [0], [42, 5]]
            for n, seq in enumerate(sessions):
                r = c.post("/events", json={"events": [
                    {"session_id": f"toy-{n}", "item_id": item_ids[i], "ts": 1_700_000_000_000 + j}
                    for j, i in enumerate(seq)]})
                assert r.status_code == 200 and r.json()["accepted"] == len(seq), r.text
                r = c.post(f"/sessions/toy-{n}/recommendations", json={"k": 10, "exclude_consumed": False})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["source"] == "session" and body["model"] == ck.name
                assert body["session_events"] == len(seq)
                assert len(body["items"]) == 10 and set(body["items"]) <= set(item_ids)
                # offline: the evaluation path (step through the session, all scores, top-K)
                state = scorer.init_state(1)
                for i in seq:
                    scores, state = scorer.step(state, torch.tensor([i]), torch.tensor([False]))
                want = torch.topk(scores[0], 10).indices.tolist()
                got = [item_ids.index(i) for i in body["items"]]
                if got != want:  # only exact-tie reordering is tolerated
                    assert torch.allclose(scores[0, got], scores[0, want], atol=1e-5), (got, want)
                assert body["scores"] == pytest.approx(scores[0, got].tolist(), abs=1e-4)
                # ... and the serving path offline (encode + fused top-K)
                _, idx = scorer.topk(scorer.encode([seq]), 10)
                assert idx[0].tolist() == got or torch.allclose(scores[0, idx[0]], scores[0, got], atol=1e-5)
            # consumed items are excluded by default, through the scorer's top-K
            r = c.post("/sessions/toy-0/recommendations", json={"k": 10})
            assert not {item_ids[i] for i in sessions[0]} & set(r.json()["items"])
            v = c.get("/versions").json()["session_model"]
            assert v["name"] == ck.name and v["n_items"] == len(item_ids) and v["epoch"] == 4
    finally:
        serve.shutdown()

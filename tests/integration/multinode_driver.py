"""Multi-node scenarios on one machine, each in its own process (run by test_multinode.py).

``python tests/integration/multinode_driver.py SCENARIO [SCENARIO ...] --work DIR
[--topology standard|trainer3]`` starts a ``ray.cluster_utils.Cluster`` (a head plus
worker nodes with custom resources), connects to it, runs the scenarios one after the
other with rayrec's own code (one cluster start-up, ~14 s, shared by all), prints one line
``MULTINODE_RESULT {json}`` (per scenario its result, or ``ok: false`` with the error) and
shuts the cluster down in ``finally``.

It runs outside the pytest process because the integration suite already holds a local
Ray (``ray_session``) there, and a second cluster in one process clashes with it.  Set
``RAY_TMPDIR`` to a private directory (the test does) so this cluster's session files and
address file never meet another Ray on the machine.

Scenarios:

* ``preprocess``: the Ray Data preprocessing pipeline; its ``process_partition`` tasks
  (read back from the state API) ran on several nodes; output written for comparison
  with a single-process run.
* ``train``: a 2-worker GRU4Rec run with ``scaling.placement_strategy=STRICT_SPREAD``;
  the worker actors' nodes (state API) are reported.
* ``node_kill``: a 2-worker run pinned to nodes offering a ``trainer`` resource; after
  the first checkpoint the node of one worker is removed; the run resumes.
* ``serve``: the recommender app from the shipped Serve config with 2 ingress and 2
  session replicas, at most one of each per node, sharing a Redis session store.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fixtures import free_port, wait_for  # noqa: E402

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RESULT_PREFIX = "MULTINODE_RESULT "




def start_cluster(head_cpus: int, workers: list[dict[str, Any]]):
    """Head (dashboard on, for the state API) + worker nodes, and this process connected."""
    import ray
    from ray.cluster_utils import Cluster

    # own ports: the pytest process's shared Ray already holds the default agent ports
    head_args = {
        "num_cpus": head_cpus,
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port(),
        "dashboard_agent_listen_port": free_port(),
        "metrics_export_port": free_port(),
        "runtime_env_agent_port": free_port(),
        "object_store_memory": 200 * 1024 * 1024,
    }
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    for w in workers:
        cluster.add_node(
            num_cpus=w["num_cpus"], resources=w.get("resources", {}),
            metrics_export_port=free_port(), runtime_env_agent_port=free_port(),
            object_store_memory=200 * 1024 * 1024,
        )
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=True)
    return cluster


def state_address(cluster) -> str:
    """The dashboard address for ``ray.util.state`` calls: explicit, so another Ray on the
    machine is never picked up by address discovery."""
    url = cluster.webui_url
    return url if url.startswith("http") else f"http://{url}"


def node_ids(cluster) -> dict[str, str]:
    """Name (head, w0, w1, ...) -> Ray node id hex."""
    out = {"head": cluster.head_node.node_id}
    for i, n in enumerate(sorted(cluster.worker_nodes, key=lambda n: n.node_id)):
        out[f"w{i}"] = n.node_id
    return out


# ---- preprocess -----------------------------------------------------------------------
def scenario_preprocess(cluster, work: Path) -> dict[str, Any]:
    """The Ray Data pipeline on the cluster; its tasks' nodes; a single-process reference."""
    from ray.util.state import list_tasks

    from rayrec.platform.config import load_config
    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.preprocessing.pipeline import run_preprocess
    from rayrec.platform.preprocessing.synthetic import generate_events, write_user_csv

    src = write_user_csv(generate_events(30_000, n_items=500, seed=7), work / "ev.csv")
    common = ["source.format=csv", f"source.path={src}",
              "source.column_map={user_id: user_id, item_id: item_id, ts: ts}"]
    t = time.perf_counter()
    cfg = load_config(PreprocessJobConfig, None, [
        *common, f"output.path={work / 'multinode'}", "ray.use_ray=true", "ray.partitions=8"])
    manifest = run_preprocess(cfg, log=lambda _m: None)
    t_run = time.perf_counter() - t

    def finished_tasks():
        rows = list_tasks(address=state_address(cluster),
                          filters=[("name", "=", "MapBatches(process_partition)")],
                          detail=True, limit=1000, raise_on_missing_output=False)
        done = [r for r in rows if r.state == "FINISHED" and r.node_id]
        return done if len(done) >= 2 else None

    done = wait_for(finished_tasks, 30, "the preprocessing tasks in the state API")
    per_node: dict[str, int] = {}
    for r in done:
        per_node[r.node_id] = per_node.get(r.node_id, 0) + 1
    # the single-node reference: the same config in one process, no Ray
    ref = load_config(PreprocessJobConfig, None, [
        *common, f"output.path={work / 'single'}", "ray.use_ray=false"])
    run_preprocess(ref, log=lambda _m: None)
    return {"tasks_per_node": per_node, "n_tasks": len(done), "partitions": 8,
            "output": str(work / "multinode"), "reference": str(work / "single"),
            "manifest_counts": manifest["counts"], "run_s": t_run}


# ---- training --------------------------------------------------------------------------
def _train_cfg(data: str, storage: Path, name: str, *extra: str):
    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig

    return load_config(TrainJobConfig, None, [
        "model.name=gru4rec", f"data.path={data}", "data.valid_split=test", "train.batch_size=16",
        "model.loss.n_sample=64",
        "scaling.num_workers=2", "scaling.cpus_per_worker=1", f"run.storage_path={storage}",
        f"run.name={name}", *extra])


def _train_workers(cluster) -> list[dict[str, Any]]:
    """Every Ray Train worker actor of this cluster (alive and dead) with its node."""
    from ray.util.state import list_actors

    rows = list_actors(address=state_address(cluster), filters=[("class_name", "=", "RayTrainWorker")],
                       detail=True, limit=1000, raise_on_missing_output=False)
    return [{"actor_id": r.actor_id, "node_id": r.node_id, "state": r.state, "pid": r.pid}
            for r in rows]


def _checkpoint_epochs(run_dir: Path) -> list[tuple[str, int]]:
    """(checkpoint dir name, epoch) for every complete checkpoint, oldest first."""
    out = []
    for meta in sorted(run_dir.glob("checkpoint_*/meta.json")):
        if (meta.parent / "model.pt").is_file():
            out.append((meta.parent.name, int(json.loads(meta.read_text())["epoch"])))
    return out


def scenario_train(cluster, work: Path) -> dict[str, Any]:
    """2 workers with scaling.placement_strategy=STRICT_SPREAD; their actors' nodes."""
    from rayrec.platform.training.trainer import fit
    from tests.fixtures import synthetic_sessions

    data = synthetic_sessions(work, n_events=8000, n_items=200)
    t = time.perf_counter()
    cfg = _train_cfg(data, work / "runs", "spread", "train.epochs=2", "train.max_steps_per_epoch=40",
                     "scaling.placement_strategy=STRICT_SPREAD")
    res = fit(cfg, log=print)
    return {"workers": _train_workers(cluster), "metrics": res.metrics,
            "checkpoints": _checkpoint_epochs(work / "runs" / "spread"),
            "checkpoint_dir": res.checkpoint_dir, "fit_s": time.perf_counter() - t}


def _worker_log_lines(cluster, pattern: str) -> dict[str, list[str]]:
    """Lines matching ``pattern`` in every worker's stdout file (all nodes share the
    session directory on one machine; a removed node's files stay)."""
    rx = re.compile(pattern)
    logs = Path(cluster.head_node.get_session_dir_path()) / "logs"
    out = {}
    for f in sorted(logs.glob("worker-*.out")):
        lines = [ln.rstrip() for ln in f.read_text(errors="replace").splitlines() if rx.search(ln)]
        if lines:
            out[f.name] = lines
    return out


def scenario_node_kill(cluster, work: Path) -> dict[str, Any]:
    """A 2-worker run on nodes offering `trainer`; after its first checkpoint the node of
    one worker is removed; the run must finish on the remaining nodes."""
    from rayrec.platform.training.trainer import fit
    from tests.fixtures import synthetic_sessions

    data = synthetic_sessions(work, n_events=8000, n_items=200)
    epochs = 4
    cfg = _train_cfg(data, work / "runs", "kill", f"train.epochs={epochs}",
                     "train.max_steps_per_epoch=150", "scaling.resources_per_worker={trainer: 1}",
                     "run.max_failures=2", "run.keep_checkpoints=null")
    run_dir = work / "runs" / "kill"
    box: dict[str, Any] = {}

    def target():
        try:
            box["result"] = fit(cfg, log=print)
        except BaseException as exc:
            box["error"] = f"{type(exc).__name__}: {exc}"

    th = threading.Thread(target=target, daemon=True)
    t0 = time.perf_counter()
    th.start()
    wait_for(lambda: _checkpoint_epochs(run_dir) or not th.is_alive(), 240, "the first checkpoint")
    before = _checkpoint_epochs(run_dir)
    if not before:
        raise RuntimeError(f"training ended before its first checkpoint: {box}")
    first_workers = [w for w in _train_workers(cluster) if w["state"] == "ALIVE"]
    victim_id = sorted(w["node_id"] for w in first_workers)[0]
    victim = next(n for n in cluster.worker_nodes if n.node_id == victim_id)
    t_kill = time.perf_counter() - t0
    print(f"[driver] removing node {victim_id} after checkpoints {before}", flush=True)
    cluster.remove_node(victim, allow_graceful=False)
    th.join(timeout=420)
    if th.is_alive():
        raise TimeoutError("training did not finish within 420 s after the node was removed")
    if "error" in box:
        raise RuntimeError(box["error"])
    res = box["result"]
    return {"victim_node": victim_id, "first_workers": first_workers,
            "checkpoints_before_kill": before, "checkpoints": _checkpoint_epochs(run_dir),
            "workers": _train_workers(cluster), "metrics": res.metrics,
            "checkpoint_dir": res.checkpoint_dir,
            "worker_lines": _worker_log_lines(cluster, r"resuming from|^epoch \d+/\d+"),
            "kill_at_s": t_kill, "fit_s": time.perf_counter() - t0}


# ---- serving ---------------------------------------------------------------------------
REDIS_URL = "redis://127.0.0.1:6379/15"
N_STEPS = 16


def _model_dir(root: Path, n_items: int = 300) -> list[str]:
    """One small GRU4Rec checkpoint ``root/m1`` over items i0..i{n-1}."""
    import torch

    from rayrec.models.gru4rec import GRU4Rec, GRU4RecConfig
    from rayrec.platform.checkpoint import save_checkpoint

    items = [f"i{k}" for k in range(n_items)]
    torch.manual_seed(0)
    cfg = GRU4RecConfig(layers=(16,))
    model = GRU4Rec(cfg, n_items)
    save_checkpoint(root / "m1", model.state_dict(), {"model": cfg.model_dump(mode="json")}, items,
                    meta={"epoch": 0})
    return items


def _replicas(cluster, deployment: str) -> list[dict[str, Any]]:
    from ray.util.state import list_actors

    rows = list_actors(address=state_address(cluster),
                       filters=[("class_name", "=", f"ServeReplica:recommender:{deployment}"),
                                ("state", "=", "ALIVE")],
                       detail=True, limit=100, raise_on_missing_output=False)
    return [{"actor_id": r.actor_id, "name": r.name, "node_id": r.node_id, "pid": r.pid}
            for r in rows]


def _replica_of_request(log_dir: Path, deployment: str, request_id: str) -> str | None:
    """The replica whose Serve log names this request id (file replica_<app>_<dep>_<id>.log)."""
    for f in sorted(log_dir.glob(f"replica_recommender_{deployment}_*.log")):
        if request_id in f.read_text(errors="replace"):
            return f.stem.rsplit("_", 1)[-1]
    return None


def scenario_serve(cluster, work: Path) -> dict[str, Any]:
    import uuid

    import httpx
    import yaml
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    from rayrec.platform.sessions import read_event_log
    from rayrec.platform.sessions.redis_sessions import RedisSessionStore

    try:
        import redis
    except ImportError:
        return {"skip": "python package redis missing (a dev extra: pip install -e '.[dev]')"}
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
    except Exception as exc:
        return {"skip": f"no Redis server at {REDIS_URL} ({exc}); start redis-server to run this"}
    items = _model_dir(work / "models")
    prefix = f"rayrec-mn-{uuid.uuid4().hex[:10]}:"
    port = free_port()
    # the shipped Serve config, pointed at this run's model and Redis; replicas spread by
    # per-deployment overrides (what an operator adds to the YAML for a multi-node cluster)
    cfg = yaml.safe_load((REPO / "serve_apps/configs/recommender.yaml").read_text())
    cfg["proxy_location"] = "HeadOnly"  # one HTTP port per machine: all nodes share 127.0.0.1
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    app = cfg["applications"][0]
    args = app["args"]
    args["session"].update({
        "model_dir": str(work / "models"), "model": "m1", "store": REDIS_URL,
        "key_prefix": prefix, "replicas": 2, "num_cpus": 0.5,
    })
    args["session"].pop("autoscaling", None)
    args["daily"]["store_path"] = None
    args["events"]["log_dir"] = str(work / "events")
    args.setdefault("ingress", {}).update({"replicas": 2, "num_cpus": 0.5})
    app["deployments"] = [{"name": "Ingress", "max_replicas_per_node": 1},
                          {"name": "SessionRecommender", "max_replicas_per_node": 1}]
    store = RedisSessionStore(REDIS_URL, prefix=prefix)
    try:
        t = time.perf_counter()
        client = serve_start(http_options=cfg["http_options"], proxy_location=cfg["proxy_location"])
        client.deploy_apps(ServeDeploySchema(**cfg))

        def running():
            st = serve.status().applications.get("recommender")
            if st is not None and str(st.status).endswith("DEPLOY_FAILED"):
                raise RuntimeError(f"deploy failed: {st.message}")
            return st is not None and str(st.status).endswith("RUNNING")

        wait_for(running, 180, "the recommender app to be RUNNING")
        t_deploy = time.perf_counter() - t
        ingress, session = _replicas(cluster, "Ingress"), _replicas(cluster, "SessionRecommender")
        base = f"http://127.0.0.1:{port}"
        sid = f"mn-{uuid.uuid4().hex[:8]}"
        steps = []
        with httpx.Client(base_url=base, timeout=30) as http:
            for i in range(N_STEPS):
                r1 = http.post("/events", json={"events": [
                    {"session_id": sid, "item_id": items[i * 7], "user_id": "u-mn"}]})
                r1.raise_for_status()
                r2 = http.get(f"/sessions/{sid}/recommendations", params={"k": 10})
                r2.raise_for_status()
                body = r2.json()
                steps.append({"post_request_id": r1.headers.get("x-request-id"),
                              "get_request_id": r2.headers.get("x-request-id"),
                              "session_events": body["session_events"], "source": body["source"],
                              "items": body["items"]})
        log_dir = Path(cluster.head_node.get_session_dir_path()) / "logs" / "serve"
        time.sleep(1.0)  # replica log lines are flushed asynchronously
        for st in steps:
            st["post_replica"] = _replica_of_request(log_dir, "Ingress", st["post_request_id"])
            st["get_replica"] = _replica_of_request(log_dir, "Ingress", st["get_request_id"])
            # the ingress -> SessionRecommender handle call carries the same request id
            st["scored_by"] = _replica_of_request(log_dir, "SessionRecommender", st["get_request_id"])
        state = store.get(sid)
        stored = [] if state is None else state.item_ids
        serve.shutdown()
        events = read_event_log(work / "events")
        log_files = sorted(p.name for p in (work / "events").glob("events-*"))
    finally:
        store.delete_prefix()
        store.close()
    return {"ingress_replicas": ingress, "session_replicas": session,
            "steps": steps, "sent_items": [items[i * 7] for i in range(N_STEPS)], "stored_items": stored,
            "event_log_rows": int((events["session_id"] == sid).sum()) if len(events) else 0,
            "event_log_files": log_files, "deploy_s": t_deploy}


SCENARIOS = {"preprocess": scenario_preprocess, "train": scenario_train,
             "serve": scenario_serve, "node_kill": scenario_node_kill}

# head + worker nodes per topology
TOPOLOGIES = {
    # head 2 CPUs (driver, Train controller, Data); two 2-CPU worker nodes
    "standard": (2, [{"num_cpus": 2, "resources": {"node_a": 1}},
                     {"num_cpus": 2, "resources": {"node_b": 1}}]),
    # three 1-CPU worker nodes, each with one `trainer` slot; the head has none, so training
    # workers never share the driver's node and one node is spare for a restart
    "trainer3": (2, [{"num_cpus": 1, "resources": {"trainer": 1}} for _ in range(3)]),
}


def main() -> int:
    import ray

    p = argparse.ArgumentParser()
    p.add_argument("scenarios", nargs="+", choices=sorted(SCENARIOS))
    p.add_argument("--work", required=True)
    p.add_argument("--topology", choices=sorted(TOPOLOGIES), default="standard")
    args = p.parse_args()
    work = Path(args.work)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    cluster = None
    if "serve" in args.scenarios:
        # One HTTP proxy (HeadOnly: every node shares 127.0.0.1 here) stands in for a load
        # balancer that spreads requests over nodes; by default a proxy sends everything to
        # a replica on its own node when there is one.  Set before the nodes start: the
        # proxy actor inherits the raylet's environment.
        os.environ["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
    try:
        head_cpus, workers = TOPOLOGIES[args.topology]
        cluster = start_cluster(head_cpus, workers)
        out["cluster_start_s"] = time.perf_counter() - t0
        out["node_ids"] = node_ids(cluster)
        for name in args.scenarios:
            t = time.perf_counter()
            sub = work / name
            sub.mkdir(parents=True, exist_ok=True)
            try:
                res = SCENARIOS[name](cluster, sub)
                res.setdefault("ok", "skip" not in res)
            except Exception as exc:
                traceback.print_exc()
                res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            res["scenario_s"] = time.perf_counter() - t
            out[name] = res
    except Exception as exc:
        traceback.print_exc()
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    out["wall_s"] = time.perf_counter() - t0
    print(RESULT_PREFIX + json.dumps(out, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

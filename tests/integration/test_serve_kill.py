"""Issue 14, finding 10: the production Serve config under bounded load while a session
replica and then an ingress replica are killed.  2,000 requests at concurrency 32 (half
``POST /events`` with a client ``event_id``, half session recommendations), each retried once
by the client on a failure: 0 failed, events accepted = stored = logged, no duplicates.

Slow (about two minutes on 2 cores): ``make test-slow`` runs it."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from rayrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from rayrec.platform.checkpoint import save_checkpoint
from rayrec.platform.sessions import EventLog, SQLiteSessionStore, read_event_log
from rayrec.platform.store import SQLiteRecommendationStore
from tests.fixtures import free_port, wait_for

httpx = pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
PROD = REPO / "serve_apps" / "configs" / "recommender_prod.yaml"
N_REQUESTS, CONCURRENCY, N_SESSIONS = 2000, 32, 200
TOKEN = "kill-test-" + uuid.uuid4().hex


def _replicas(deployment):
    import ray

    return {a["name"]: a for a in ray.util.list_named_actors(all_namespaces=True)
            if f"#{deployment}#" in a["name"]}


def _rss_mb(actor):
    import ray

    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
    with open(f"/proc/{pid}/status") as fh:
        return next(int(x.split()[1]) / 1024 for x in fh if x.startswith("VmRSS:"))


@pytest.mark.slow
def test_prod_config_survives_replica_kills_exactly_once(tmp_path, ray_session):
    import ray
    from ray import serve

    from rayrec.serve_apps.app import RecommenderArgs, build_app
    from rayrec.serve_apps.auth import hash_token

    items = [f"i{j}" for j in range(2000)]
    torch.manual_seed(0)
    cfg = GRU4RecConfig(layers=(64,))
    save_checkpoint(tmp_path / "models" / "m1", GRU4Rec(cfg, len(items)).state_dict(),
                    {"model": cfg.model_dump(mode="json")}, items)
    with SQLiteRecommendationStore(tmp_path / "recs.db") as st:
        st.publish("v1", "2026-01-01", "d", [("u1", items[:20], [1.0] * 20)])
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump([{"name": "load", "sha256": hash_token(TOKEN),
                                       "scopes": ["read", "write"]}]))
    prod = yaml.safe_load(PROD.read_text())
    a = prod["applications"][0]["args"]
    assert a["ingress"]["replicas"] == 2 and a["session"]["replicas"] == 2 and a["auth"]["enabled"]
    a["session"].update(model_dir=str(tmp_path / "models"),
                        store=f"sqlite://{tmp_path / 'sessions.db'}", num_cpus=0.25)
    a["ingress"]["num_cpus"] = 0.25
    a["daily"]["store_path"] = str(tmp_path / "recs.db")
    a["events"]["log_dir"] = str(tmp_path / "events")
    a["auth"]["tokens_file"] = str(tokens)
    a["health"] = {"period_s": 2, "timeout_s": 10}
    args = RecommenderArgs(**a)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        from ray.serve.context import _get_global_client

        port = int(_get_global_client().http_config.port)
        serve.run(build_app(args), name="prod", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        auth = {"authorization": f"Bearer {TOKEN}"}
        rss = {d: [round(_rss_mb(ray.get_actor(n, namespace=x["namespace"])))
                   for n, x in _replicas(d).items()]
               for d in ("Ingress", "SessionRecommender", "DailyRecommender")}
        print(f"replica RSS MB: {rss}")

        done = [0]
        lock = threading.Lock()
        accepted: list[str] = []
        failures: list[tuple[str, object]] = []
        retried = [0]
        local = threading.local()

        def client():
            c = getattr(local, "c", None)
            if c is None:
                c = local.c = httpx.Client(base_url=base, timeout=60, headers=auth)
            return c

        def one(n: int) -> None:
            rng = random.Random(n)
            sid = f"k{rng.randrange(N_SESSIONS)}"
            if n % 2 == 0:
                eid = f"ev-{n}"
                req = ("POST", "/events", {"events": [{"session_id": sid, "item_id": f"x{n}",
                                                       "event_id": eid}]})
            else:
                eid = None
                req = ("GET", f"/sessions/{sid}/recommendations?k=10", None)
            last: object = None
            for attempt in (0, 1):  # the client's one retry
                try:
                    r = client().request(req[0], req[1], json=req[2])
                    if r.status_code == 200:
                        body = r.json()
                        if eid is not None:
                            assert body["accepted"] + body["duplicates"] == 1, body
                            with lock:
                                accepted.append(eid)
                        break
                    last = (r.status_code, r.text[:200])
                except httpx.HTTPError as exc:
                    last = repr(exc)
                if attempt == 0:
                    with lock:
                        retried[0] += 1
            else:
                with lock:
                    failures.append((req[1], last))
            with lock:
                done[0] += 1

        killed: list[str] = []

        def killer():
            for after, deployment in ((500, "SessionRecommender"), (1200, "Ingress")):
                wait_for(lambda n=after: done[0] >= n, 600, f"{after} requests, then a kill",
                         0.05)
                name, x = next(iter(_replicas(deployment).items()))
                ray.kill(ray.get_actor(name, namespace=x["namespace"]), no_restart=True)
                killed.append((deployment, done[0]))

        t0 = time.time()
        k = threading.Thread(target=killer)
        k.start()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(one, range(N_REQUESTS)))
        k.join(60)
        wall = time.time() - t0
        # a killed ingress may have committed events it never logged: the next drain does
        store = SQLiteSessionStore(tmp_path / "sessions.db")
        log = EventLog(tmp_path / "events", writer_id="test-final")
        store.drain_outbox(log)
        log.close()
        stored = [e.item_id for j in range(N_SESSIONS)
                  for e in (store.get(f"k{j}").events if store.get(f"k{j}") else [])]
        logged = read_event_log(tmp_path / "events")
        print(f"{N_REQUESTS} requests at concurrency {CONCURRENCY} in {wall:.0f}s: "
              f"{len(failures)} failed after one retry, {retried[0]} retried; accepted "
              f"{len(accepted)}, stored {len(stored)}, logged {len(logged)}; kills {killed}")
        assert [d for d, _ in killed] == ["SessionRecommender", "Ingress"], killed
        assert all(n < N_REQUESTS - 200 for _, n in killed), killed  # both under load
        assert failures == [], failures[:5]
        want = {f"x{int(e.split('-')[1])}" for e in accepted}
        assert len(accepted) == len(set(accepted)) == N_REQUESTS // 2
        assert len(stored) == len(set(stored)) and set(stored) == want
        assert len(logged) == logged["event_id"].nunique() == len(want)
        assert set(logged["item_id"]) == want
        assert store.outbox_pending() == 0
    finally:
        serve.delete("prod")
        serve.shutdown()

"""Closed-loop HTTP load on the recommender Serve app (issue 5), 127.0.0.1 only.

For each concurrency level (default 1, 8, 32) and each endpoint of the *same* app in the same
run - ``GET /noop`` (Serve + FastAPI overhead only), ``GET /sessions/{id}/recommendations``
(session store read + handle call + @serve.batch GRU4Rec over the full catalogue, top-20) and
``GET /users/{id}/recommendations`` (daily store lookup + filters) - C client threads send
requests back to back until ``--requests`` requests or ``--max-seconds`` have passed.  Prints
p50 / p99 latency and throughput, and the session/no-op latency ratios (targets: p50 <= 1.3x
at concurrency 1 (issue 14), p99 <= 2x).  The session recommender caches each stored
session's encoding under its version (``ScoreRequest.cache_key``), so a repeated request for
an unchanged session is scored without re-reading its events through the GRU.

    .venv/bin/python -m benchmarks.serve_load                      # random GRU4Rec, 10k items
    .venv/bin/python -m benchmarks.serve_load --model-dir runs/x --model checkpoint_...
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_checkpoint(path: Path, n_items: int, hidden: int) -> list[str]:
    import torch

    from rayrec.models.gru4rec import GRU4Rec, GRU4RecConfig
    from rayrec.platform.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = GRU4RecConfig(layers=(hidden,))
    items = [f"i{j}" for j in range(n_items)]
    save_checkpoint(path, GRU4Rec(cfg, n_items).state_dict(),
                    {"model": cfg.model_dump(mode="json")}, items)
    return items


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    i = min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))
    return xs[i]


def run_level(base: str, paths, conc: int, n_requests: int, max_s: float) -> dict:
    import httpx

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    count = [0]
    t_end = time.perf_counter() + max_s

    def worker(w: int) -> None:
        rng = random.Random(w)
        with httpx.Client(base_url=base, timeout=30.0) as c:
            while True:
                with lock:
                    if count[0] >= n_requests or time.perf_counter() > t_end:
                        return
                    count[0] += 1
                p = paths(rng)
                t0 = time.perf_counter()
                try:
                    ok = c.get(p).status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        lat.append(dt)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(conc)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"n": len(lat), "errors": errors[0], "p50": _percentile(lat, 0.5) * 1e3,
            "p99": _percentile(lat, 0.99) * 1e3, "mean": (statistics.mean(lat) * 1e3) if lat else 0,
            "rps": len(lat) / wall if wall > 0 else 0.0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n-items", type=int, default=10_000)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--session-len", type=int, default=5)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=300, help="per endpoint and level")
    ap.add_argument("--max-seconds", type=float, default=20.0, help="per endpoint and level")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--num-cpus", type=int, default=4)
    ap.add_argument("--session-replicas", type=int, default=1)
    ap.add_argument("--batch-wait-ms", type=float, default=0.0)
    ap.add_argument("--address", default=None,
                    help="connect to a running local Ray (default: start one for the run)")
    a = ap.parse_args(argv)

    import httpx
    import ray
    from ray import serve

    from rayrec.platform.store import SQLiteRecommendationStore
    from rayrec.serve_apps.app import RecommenderArgs, build_app

    work = Path(tempfile.mkdtemp(prefix="rayrec-serve-load-"))
    if a.model_dir:
        model_dir, model = a.model_dir, a.model
        import json

        items = json.loads((Path(model_dir) / model / "items.json").read_text())
    else:
        model_dir, model = str(work / "models"), "bench"
        items = _make_checkpoint(work / "models" / model, a.n_items, a.hidden)
    store = SQLiteRecommendationStore(work / "recs.db")
    rng = random.Random(0)
    n_users = 1000
    store.publish("v1", "2026-01-01", "bench",
                  ((f"u{u}", rng.sample(items, 50), [float(50 - j) for j in range(50)])
                   for u in range(n_users)))
    args = RecommenderArgs(
        session={"model_dir": model_dir, "model": model,
                 "store": f"sqlite://{work / 'sessions.db'}", "replicas": a.session_replicas,
                 "batching": {"wait_timeout_s": a.batch_wait_ms / 1000.0}},
        daily={"store_path": str(work / "recs.db")},
        events={"log_dir": str(work / "events")},
        limits={"max_k": max(100, a.k)},
    )
    if a.address:
        ray.init(address=a.address, log_to_driver=False)
    else:
        ray.init(num_cpus=a.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
        from ray.serve.context import _get_global_client

        cfg = _get_global_client().http_config  # a running Serve keeps its own options
        if cfg.host not in ("127.0.0.1", "localhost"):
            raise SystemExit(f"Serve listens on {cfg.host}; this benchmark stays on 127.0.0.1")
        port = int(cfg.port)
        t0 = time.time()
        serve.run(build_app(args), name="rec", route_prefix="/")
        print(f"deployed in {time.time() - t0:.1f}s on 127.0.0.1:{port}; {len(items)} items, "
              f"top-{a.k}, {os.cpu_count()} CPUs")
        base = f"http://127.0.0.1:{port}"
        n_sessions = 200
        with httpx.Client(base_url=base, timeout=60) as c:
            for s0 in range(0, n_sessions, 50):
                rows = [{"session_id": f"s{s}", "item_id": it}
                        for s in range(s0, s0 + 50) for it in rng.sample(items, a.session_len)]
                assert c.post("/events", json={"events": rows}).status_code == 200
        endpoints = {
            "noop": lambda r: "/noop",
            "session": lambda r: f"/sessions/s{r.randrange(n_sessions)}/recommendations?k={a.k}",
            "daily": lambda r: f"/users/u{r.randrange(n_users)}/recommendations?k={a.k}",
        }
        for fn in endpoints.values():  # warm-up (connections, batch loops, caches)
            run_level(base, fn, 4, a.warmup, 30.0)
        rows = []
        for conc in [int(x) for x in a.concurrency.split(",")]:
            for name, fn in endpoints.items():
                r = run_level(base, fn, conc, a.requests, a.max_seconds)
                rows.append((name, conc, r))
        print(f"\n{'endpoint':<9}{'conc':>5}{'n':>6}{'err':>5}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'req/s':>8}")
        for name, conc, r in rows:
            print(f"{name:<9}{conc:>5}{r['n']:>6}{r['errors']:>5}{r['p50']:>9.1f}{r['p99']:>9.1f}"
                  f"{r['rps']:>8.1f}")
        print(f"\n{'conc':>5}{'session/noop p50':>18}{'session/noop p99':>18}  (targets <= 1.3 at "
              "concurrency 1, <= 2.0)")
        by = {(n, c): r for n, c, r in rows}
        for conc in sorted({c for _, c, _ in rows}):
            s, n = by[("session", conc)], by[("noop", conc)]
            print(f"{conc:>5}{s['p50'] / n['p50']:>18.2f}{s['p99'] / n['p99']:>18.2f}")
    finally:
        try:
            serve.delete("rec")
            if not a.address:
                serve.shutdown()
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()

"""Daily model (seed 000) at catalog scale: training speed and per-worker memory on Ray
Train with the catalog split across workers, and batch-prediction throughput on Ray Data.

Usage::

    .venv/bin/python -m benchmarks.daily                 # P = 100k and 1M, 1 and 2 workers
    .venv/bin/python -m benchmarks.daily --items 100000  # one catalog size

Synthetic purchases (Zipf-like popularity, 8 inputs and 2 targets per user), hidden layers
(64, 32), predictor variant with the parametric decay, batch 32, fp32 Adam.  Each training
row is one ``fit`` run (``model.name: daily_nn``): epoch 1 warms up, epoch 2 is timed; the
input table takes row-sparse updates (``optim.sparse_item_rows``; ``--dense-too`` adds the
dense rows).  ``param MB/worker`` is
``shard_parameter_bytes`` of each rank's model; ``peak RSS MB/worker`` is the worker
process's max RSS (includes Python, torch and Ray, ~0.5 GB).  Batch prediction scores
``--users`` users with a P = 100k checkpoint, Ray Data ``map_batches`` with 2 actors vs
one in-process scorer.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

from benchmarks._common import machine, table, today


def _train_cfg(items: int, workers: int, users: int, steps: int, storage: str, checkpoint: bool = False,
               sparse: bool = True):
    from rayrec.platform.config import apply_overrides
    from rayrec.platform.training.config import TrainJobConfig

    where = ["ray.use_ray=false"] if workers == 0 else [f"scaling.num_workers={workers}", "ray.use_ray=true"]
    return TrainJobConfig.model_validate(apply_overrides({}, [
        "model.name=daily_nn", *where,
        f"data.synthetic={{n_users: {users}, n_items: {items}, items_per_user: 8, targets_per_user: 2}}",
        "data.valid_split=null", "train.epochs=2", "train.batch_size=32", f"train.max_steps_per_epoch={steps}",
        "model.hidden_sizes=[64,32]", "model.variant=predictor", "model.decay=parametric", "model.ti=40",
        "model.dropout=0.0", "scaling.cpus_per_worker=1",
        f"run.storage_path={storage}", f"run.name=bench_{items}_{workers}_{int(sparse)}",
        f"run.checkpoint={str(checkpoint).lower()}", f"optim.sparse_item_rows={str(sparse).lower()}",
        "ray.num_cpus=4",
    ]))


def bench_train(items: int, workers: int, users: int, steps: int, storage: str, sparse: bool = True) -> dict:
    from rayrec.platform.training.trainer import fit

    t = time.perf_counter()
    res = fit(_train_cfg(items, workers, users, steps, storage, sparse=sparse), log=lambda _m: None)
    wall = time.perf_counter() - t
    m = res.metrics
    return {
        "P": items, "workers": workers, "input table": "row-sparse" if sparse else "dense",
        "examples/s": float(m["examples_per_s"]),
        "loss": float(m["loss"]),
        "param MB/worker": "/".join(f"{b / 2**20:.0f}" for b in m["param_bytes_per_rank"]),
        "peak RSS MB/worker": "/".join(f"{r:.0f}" for r in m["peak_rss_mb_per_rank"]),
        "wall s (incl. start-up)": wall,
    }


def bench_predict(users: int, items: int, storage: str) -> list[dict]:
    from rayrec.platform.daily.config import PredictConfig
    from rayrec.platform.daily.data import synthetic_windows
    from rayrec.platform.daily.predict import batch_predict
    from rayrec.platform.training.trainer import fit

    cfg = _train_cfg(items, 0, 64, 1, storage, checkpoint=True)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})})
    ck = fit(cfg, log=lambda _m: None).checkpoint_dir
    w = synthetic_windows(cfg.data.synthetic.model_copy(update={"n_users": users, "seed": 1}))
    rows = []
    for label, pc, use_ray in (
        ("in-process, 1 scorer", PredictConfig(k=10, batch_size=256), False),
        ("Ray Data, 2 actors", PredictConfig(k=10, batch_size=256, concurrency=2, num_cpus_per_actor=1), True),
    ):
        t = time.perf_counter()
        out = batch_predict(ck, w, pc, use_ray=use_ray)
        dt = time.perf_counter() - t
        rows.append({"mode": label, "P": items, "users": len(out), "users/s": len(out) / dt, "wall s": dt})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--users", type=int, default=512, help="training users (synthetic)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per epoch")
    ap.add_argument("--predict-users", type=int, default=4000)
    ap.add_argument("--skip-predict", action="store_true")
    ap.add_argument("--dense-too", action="store_true",
                    help="also train with optim.sparse_item_rows=false (every input row updated each step)")
    args = ap.parse_args()

    from rayrec.platform.runtime import init_ray

    init_ray(None, 4, log_to_driver=False)
    storage = tempfile.mkdtemp(prefix="rayrec-bench-daily-")
    modes = (True, False) if args.dense_too else (True,)
    rows = [bench_train(p, w, args.users, args.steps, storage, sparse)
            for p in args.items for w in args.workers for sparse in modes]
    print(f"# daily model training, {machine()}, {today()}")
    print(table(rows, ["P", "workers", "input table", "examples/s", "loss", "param MB/worker", "peak RSS MB/worker",
                       "wall s (incl. start-up)"]))
    if not args.skip_predict:
        prow = bench_predict(args.predict_users, 100_000, storage)
        print(f"\n# daily batch predictions (top-10, P = 100k), {machine()}, {today()}")
        print(table(prow, ["mode", "P", "users", "users/s", "wall s"]))
    import ray

    ray.shutdown()


if __name__ == "__main__":
    main()

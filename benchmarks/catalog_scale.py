"""Catalog-scale training: GRU4Rec events/s and peak RSS against the number of items N.

    .venv/bin/python -m benchmarks.catalog_scale [--items 5000 50000 500000 1000000]
        [--events 50000] [--epochs 2] [--no-ray] [--official DIR]

For every N the same synthetic session log (``--events`` events in sessions of 2-9 events,
items drawn with probability ~ rank^-0.5 from the first ``min(N, 1.2 * events)`` items) is
written as a TSV, preprocessed by the real preprocess job, and its ``items.parquet`` extended
to N items with catalog entries that have no training event (a product feed larger than the
log: the item tables have N rows, the sampler never draws the unseen ones).  Rows, each in
its own process (clean peak RSS), reference config of ``jobs/configs/gru4rec_rsc15.yaml``
(one GRU layer of 100, cross-entropy, 2,048 shared negatives, batch 32, Adagrad-momentum):

* ``plain loop``: the production loop in this process on in-memory data (``run_local``),
  row-sparse item tables (``optim.sparse_item_rows: true``, the default), 2 torch threads;
* ``plain loop, alias sampler``: the same with ``model.loss.sampler: alias`` (O(1) draws);
* ``plain loop, dense tables``: the same with ``optim.sparse_item_rows: false`` (the previous
  behaviour, every row of every item table updated each step; at N >= 500k capped at
  ``--dense-steps`` steps per epoch, events/s measured over those);
* ``fit in-process``: the production driver (data loading, checkpoints) with ``ray.use_ray:
  false``; ``Ray Train 1 worker`` (2 cpus); ``Ray Train 2 workers DDP`` (1 cpu each, touched
  rows all-gathered, ``platform/training/sparse_rows.py``); ``Ray Train 2 workers DeepSpeed
  ZeRO-2``: ZeRO takes dense gradients, so the item tables are dense (capped like the dense
  rows);
* ``official`` (with ``--official DIR``): the authors' PyTorch implementation driven by
  ``DIR/run_official.py`` (not part of this repository, run with ``DIR/.venv/bin/python``
  when that exists; see BENCHMARKS.md) on the same TSV, same config and threads.  Its item
  index is built from the log, so its tables hold only the items with events (it cannot hold
  a catalog entry without one): at N above the seen items it trains smaller tables than ours.

Events/s = training events (next-item pairs) per second of the last epoch; validation off.
Targets (issue 13): plain loop at the largest N >= 0.67x at the smallest; Ray Train 1 worker
>= 0.9x the plain loop at every N; ours >= 2x the official implementation at every N.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import machine, table, today

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs/configs/gru4rec_rsc15.yaml"


def write_log(path: Path, n_items: int, events: int, seed: int = 0) -> int:
    """The synthetic session log as a TSV ``SessionId ItemId Time``; returns its event count."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    seen = min(n_items, int(1.2 * events))
    w = 1.0 / np.sqrt(np.arange(1, seen + 1))
    lens = rng.integers(2, 10, size=events // 4)
    lens = lens[np.cumsum(lens) <= events]
    n = int(lens.sum())
    items = rng.choice(seen, size=n, p=w / w.sum())
    sessions = np.repeat(np.arange(len(lens)), lens)
    ts = 1.4e9 + np.arange(n, dtype=np.float64) * 10.0
    pd.DataFrame({"SessionId": sessions, "ItemId": items, "Time": ts}).to_csv(path, sep="\t", index=False)
    return n


def prepare(root: Path, n_items: int, events: int) -> Path:
    """Preprocessed data for one N (cached under ``root``)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.preprocessing.pipeline import run_preprocess

    out = root / f"n{n_items}"
    if (out / "manifest.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    tsv = root / f"n{n_items}.tsv"
    write_log(tsv, n_items, events)
    cfg = PreprocessJobConfig.model_validate({
        "source": {"format": "rsc15_prepared", "paths": {"train_full": str(tsv)}},
        "filter": {"min_session_length": 1, "min_item_support": 1},
        "split": {"name": "predefined", "index_split": "train_full", "min_test_session_length": 2},
        "output": {"path": str(out)}, "ray": {"use_ray": False}})
    run_preprocess(cfg, log=lambda _m: None)
    items = pd.read_parquet(out / "items.parquet")
    extra = n_items - len(items)
    if extra > 0:  # catalog entries without a training event, after the seen items
        pad = pd.DataFrame({"item_idx": np.arange(len(items), n_items, dtype=np.int32),
                            "item_id": [f"feed-{i}" for i in range(extra)],
                            "count": np.zeros(extra, dtype=np.int64)})
        items = pd.concat([items, pad], ignore_index=True)
        pq.write_table(pa.Table.from_pandas(items, preserve_index=False), out / "items.parquet")
        man = json.loads((out / "manifest.json").read_text())
        man["items"]["n_items"] = n_items
        (out / "manifest.json").write_text(json.dumps(man, indent=2))
    return out


def _job(data: Path, storage: Path, epochs: int, *overrides: str):
    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig

    return load_config(TrainJobConfig, CONFIG, [
        f"data.path={data}", "data.train_split=train_full", "data.valid_split=null", "data.test_split=null",
        f"train.epochs={epochs}",
        f"run.storage_path={storage}", *overrides])


def one(spec: dict) -> dict:
    """Run one row (in a child process) and return its numbers."""
    data, storage, epochs = Path(spec["data"]), Path(spec["storage"]), int(spec["epochs"])
    kind, ov = spec["kind"], list(spec["overrides"])
    if kind == "official":
        tsv = data.parent / f"{data.name}.tsv"
        odir = Path(spec["official"])
        py = odir / ".venv/bin/python"  # its own environment, if it has one
        cmd = [str(py if py.is_file() else sys.executable), str(odir / "run_official.py"), "--train", str(tsv),
               "--epochs", str(epochs), "--threads", "2"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        ep = res["epochs"][-1]
        return {"events/s": ep["events_per_s"], "n_items_seen": res.get("n_items")}
    from rayrec.platform.training.families import SessionFamily
    from rayrec.platform.training.loop import run_local
    from rayrec.platform.training.trainer import fit

    job = _job(data, storage, epochs, *ov)
    t = time.perf_counter()
    if kind == "plain":
        m = run_local(job, SessionFamily.load(job, with_valid=False), log=lambda _m: None)
    else:
        m = fit(job, log=lambda _m: None).metrics
    wall = time.perf_counter() - t
    rss = m.get("peak_rss_mb_per_rank") or [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0]
    return {"events/s": m["examples_per_s"], "loss": m["loss"], "wall s": wall,
            "peak RSS MB": max(rss) if kind == "plain" else "/".join(f"{r:,.0f}" for r in rss)}


ROWS = [
    ("plain loop (run_local)", "plain", ["ray.use_ray=false", "run.checkpoint=false", "scaling.torch_threads=2"]),
    ("plain loop, alias sampler", "plain", ["ray.use_ray=false", "run.checkpoint=false", "scaling.torch_threads=2",
                                            "model.loss.sampler=alias"]),
    ("plain loop, dense tables", "plain", ["ray.use_ray=false", "run.checkpoint=false", "scaling.torch_threads=2",
                                           "optim.sparse_item_rows=false"]),
    ("fit in-process", "fit", ["ray.use_ray=false", "scaling.torch_threads=2"]),
    ("Ray Train 1 worker", "fit", ["scaling.num_workers=1", "scaling.cpus_per_worker=2"]),
    ("Ray Train 2 workers DDP", "fit", ["scaling.num_workers=2", "scaling.cpus_per_worker=1"]),
    ("Ray Train 2 workers DeepSpeed ZeRO-2, dense tables", "fit",
     ["scaling.num_workers=2", "scaling.cpus_per_worker=1", "scaling.engine=deepspeed", "scaling.zero_stage=2"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[5_000, 50_000, 500_000, 1_000_000])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--dense-steps", type=int, default=150, help="steps per epoch of the dense rows at N >= 500k")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray Train rows")
    ap.add_argument("--deepspeed-max-items", type=int, default=50_000,
                    help="skip the DeepSpeed row above this N (dense ZeRO steps take minutes there)")
    ap.add_argument("--official", default=None, help="folder holding run_official.py (the authors' code)")
    ap.add_argument("--data", default=str(REPO / "outputs/catalog_scale"))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.one:
        print(json.dumps(one(json.loads(args.one))), flush=True)
        return
    rows = []
    storage = Path(tempfile.mkdtemp(prefix="rayrec-bench-catalog-"))
    for n in args.items:
        data = prepare(Path(args.data), n, args.events)
        settings = [r for r in ROWS if not (args.no_ray and r[0].startswith("Ray"))
                    and not ("DeepSpeed" in r[0] and n > args.deepspeed_max_items)]
        if args.official:
            settings.append(("official (authors' PyTorch)", "official", []))
        for label, kind, ov in settings:
            ov = list(ov) + [f"run.name=cs{n}-{len(rows)}"]
            if ("dense" in label or "DeepSpeed" in label) and n >= 500_000:
                ov.append(f"train.max_steps_per_epoch={args.dense_steps}")
                label += f" ({args.dense_steps} steps)"
            spec = {"data": str(data), "storage": str(storage), "epochs": args.epochs, "kind": kind,
                    "overrides": ov, "official": args.official}
            proc = subprocess.run([sys.executable, "-m", "benchmarks.catalog_scale", "--one", json.dumps(spec)],
                                  cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:
                res = {"events/s": None, "error": proc.stderr.strip().splitlines()[-1][:120]}
            else:
                res = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"N items": n, "setting": label, **res})
            print(f"  {rows[-1]}", flush=True)
    shutil.rmtree(storage, ignore_errors=True)
    print(f"\nGRU4Rec catalog scale (reference config, {args.events:,} synthetic events, last of "
          f"{args.epochs} epochs) — {machine()} — {today()}")
    print(table(rows, ["N items", "setting", "events/s", "peak RSS MB", "wall s", "error"]))

    def rate(n: int, prefix: str) -> float | None:
        return next((r["events/s"] for r in rows if r["N items"] == n and r["setting"].startswith(prefix)
                     and r["events/s"]), None)

    lo, hi = min(args.items), max(args.items)
    if rate(lo, "plain loop (") and rate(hi, "plain loop ("):
        print(f"\nplain loop at N={hi:,} / at N={lo:,} = {rate(hi, 'plain loop (') / rate(lo, 'plain loop ('):.2f}"
              " (target >= 0.67)")
    for n in args.items:
        plain, ray1, off = rate(n, "plain loop ("), rate(n, "Ray Train 1"), rate(n, "official")
        if plain and ray1:
            print(f"N={n:,}: Ray Train 1 worker / plain loop = {ray1 / plain:.2f} (target >= 0.9)")
        if plain and off:
            print(f"N={n:,}: plain loop / official = {plain / off:.2f} (target >= 2)")


if __name__ == "__main__":
    main()

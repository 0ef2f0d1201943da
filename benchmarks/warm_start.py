"""Warm start (``train.init_from``) vs training from scratch on the next day's data.

    .venv/bin/python -m benchmarks.warm_start [--epochs 5] [--days-back 2]

A real split of rsc15-100k (``../shared/data/rsc15-100k``, the session-rec ``train_full`` and
``test`` files): day N is every session of ``train_full`` that ended at least ``--days-back``
days before its last event; day N+1 is all of ``train_full`` (more days, new items), indexed
with ``output.item_index_from`` = day N's output, so day N's item_idx stay put.  Both day-N+1
runs are evaluated on the same ``test`` file (next-item protocol, Recall@20 / MRR@20) after
every epoch:

* scratch: GRU4Rec (the reference config: 1 x 100, CE + logQ, 2048 samples) from a fresh
  initialisation on day N+1;
* warm: the same config, ``train.init_from`` = the day-N model (trained for ``--epochs`` on
  day N), on day N+1.

The table gives both per epoch and the first epoch at which the warm run reaches the
scratch run's final Recall@20.  Everything runs in this process (``ray.use_ray: false``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks._common import machine, table, today

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "rsc15-100k"
DAY = 86_400.0


def _preprocess(paths: dict[str, str], out: Path, *extra: str) -> None:
    from rayrec.platform.config import load_config
    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.preprocessing.pipeline import run_preprocess

    over = ["source.format=rsc15_prepared", f"output.path={out}", "ray.use_ray=false",
            "filter.min_session_length=1", "filter.min_item_support=1", "split.name=predefined",
            "split.index_split=train_full", *[f"source.paths.{k}={v}" for k, v in paths.items()], *extra]
    run_preprocess(load_config(PreprocessJobConfig, None, over), log=lambda _m: None)


def _fit(root: Path, runs: Path, name: str, epochs: int, *extra: str):
    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.trainer import fit

    cfg = load_config(TrainJobConfig, REPO / "jobs/configs/gru4rec_rsc15.yaml", [
        f"data.path={root}", "data.train_split=train_full", "data.valid_split=test", f"train.epochs={epochs}",
        "ray.use_ray=false", f"run.storage_path={runs}", f"run.name={name}", "eval.ks=[20]", *extra])
    return fit(cfg, log=print)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--days-back", type=float, default=2.0)
    args = ap.parse_args()
    full = DATA / "yoochoose-clicks-100k_train_full.txt"
    test = DATA / "yoochoose-clicks-100k_test.txt"
    if not full.is_file():
        raise SystemExit(f"{full} not found (the shared rsc15-100k data)")
    tmp = Path(tempfile.mkdtemp(prefix="rayrec-warm-"))
    try:
        df = pd.read_csv(full, sep="\t", dtype={"SessionId": str, "ItemId": str})
        end = df.groupby("SessionId")["Time"].transform("max")
        day_n = df.loc[end < df["Time"].max() - args.days_back * DAY]
        day_n.to_csv(tmp / "day_n.txt", sep="\t", index=False)
        _preprocess({"train_full": str(tmp / "day_n.txt"), "test": str(test)}, tmp / "data_n")
        _preprocess({"train_full": str(full), "test": str(test)}, tmp / "data_n1",
                    f"output.item_index_from={tmp / 'data_n'}")
        n_items = [len(pd.read_parquet(tmp / d / "items.parquet")) for d in ("data_n", "data_n1")]
        base = _fit(tmp / "data_n", tmp / "runs", "day_n", args.epochs)
        scratch = _fit(tmp / "data_n1", tmp / "runs", "scratch", args.epochs)
        warm = _fit(tmp / "data_n1", tmp / "runs", "warm", args.epochs, f"train.init_from={base.checkpoint_dir}")
        rows = []
        for s, w in zip(scratch.history, warm.history):
            rows.append({"epoch": s["epoch"], "scratch Recall@20": f"{s['recall@20']:.4f}",
                         "scratch MRR@20": f"{s['mrr@20']:.4f}", "warm Recall@20": f"{w['recall@20']:.4f}",
                         "warm MRR@20": f"{w['mrr@20']:.4f}"})
        target = scratch.history[-1]["recall@20"]
        reach = next((h["epoch"] for h in warm.history if h["recall@20"] >= target), None)
        print(f"\n# warm start, rsc15-100k, {today()}, {machine()}")
        print(f"day N: {len(day_n):,} events ({args.days_back:g} days less), {n_items[0]:,} items; day N+1: "
              f"{len(df):,} events, {n_items[1]:,} items ({n_items[1] - n_items[0]:,} appended); "
              f"test: next-item on {scratch.history[-1]['n']:,} events")
        print(table(rows, list(rows[0])))
        print(f"scratch final Recall@20 {target:.4f} after {args.epochs} epochs; warm reaches it at epoch "
              f"{reach if reach is not None else f'> {args.epochs}'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Plain (Ray-free) GRU4Rec run on rsc15-100k: accuracy and training speed.

Usage::

    .venv/bin/python benchmarks/gru4rec_plain.py --epochs 10
    .venv/bin/python benchmarks/gru4rec_plain.py --loss bpr-max --lr 0.05 --bpreg 1.0 \
        --final-act elu --dropout-hidden 0.0

Reads ``../shared/data/rsc15-100k`` (TSV ``SessionId ItemId Time``); the item index is the
training items ordered by popularity (descending, ties by item id); test events whose item is
not in train are dropped (then sessions shorter than 2 give no pair).

Training is the production loop in this process (``rayrec.platform.training.loop.run_local``,
the loop every model and engine runs; no Ray); the last epoch's checkpoint is rebuilt with
``rayrec.platform.checkpoint.load_model`` and evaluated once on the test split (next-item
protocol, ``evaluate_next_item``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rayrec.models.session_parallel import SessionArrays, item_counts
from rayrec.platform.checkpoint import load_model
from rayrec.platform.evaluation.protocols import evaluate_next_item
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.families import TrainData
from rayrec.platform.training.loop import run_local

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15-100k"
TRAIN = "yoochoose-clicks-100k_train_full.txt"
TEST = "yoochoose-clicks-100k_test.txt"


def load_rsc15(data_dir: Path = DATA) -> tuple[SessionArrays, SessionArrays, list[str]]:
    """(train arrays, test arrays, item ids) with the popularity-ordered item index."""
    tr = pd.read_csv(data_dir / TRAIN, sep="\t", dtype={"ItemId": np.int64})
    te = pd.read_csv(data_dir / TEST, sep="\t", dtype={"ItemId": np.int64})
    pop = tr.groupby("ItemId").size()
    order = sorted(pop.index, key=lambda i: (-pop[i], i))
    index = pd.Series(np.arange(len(order)), index=order)
    te = te[te["ItemId"].isin(index.index)]

    def arrays(df: pd.DataFrame) -> SessionArrays:
        frame = pd.DataFrame(
            {
                "session_id": df["SessionId"].to_numpy(),
                "item_idx": index[df["ItemId"].to_numpy()].to_numpy(),
                "ts": df["Time"].to_numpy(dtype=np.float64),
            }
        )
        return SessionArrays.from_frame(frame)

    return arrays(tr), arrays(te), [str(i) for i in order]


def job_config(args: argparse.Namespace, storage: str) -> TrainJobConfig:
    """The benchmark's command line as a training job of the one loop (in this process)."""
    return TrainJobConfig.model_validate({
        "model": {
            "name": "gru4rec",
            "layers": list(args.layers),
            "dropout_p_hidden": args.dropout_hidden,
            "dropout_p_embed": args.dropout_embed,
            "final_act": args.final_act,
            "elu_param": args.elu_param,
            "constrained_embedding": not args.unconstrained,
            "embedding": args.embedding,
            "loss": {
                "name": args.loss,
                "n_sample": args.n_sample,
                "sample_alpha": args.alpha,
                "bpreg": args.bpreg,
                "logq": args.logq,
                "logq_mode": args.logq_mode,
                "mask_sample_hits": not args.no_mask_sample_hits,
            },
        },
        "optim": {"name": args.optim, "lr": args.lr, "momentum": args.momentum,
                  "sparse_item_rows": not args.dense_item_rows},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed},
        "scaling": {"torch_threads": args.threads},
        "run": {"storage_path": storage},
        "ray": {"use_ray": False},
    })


def run(args: argparse.Namespace) -> dict:
    train, test, item_ids = load_rsc15(Path(args.data))
    job = job_config(args, tempfile.mkdtemp(prefix="rayrec-gru4rec-plain-"))
    box = {}

    def report(metrics: dict, ck_dir: str | None) -> None:
        if ck_dir is not None and metrics["epoch"] == args.epochs:
            box["model"] = load_model(ck_dir, expected_item_ids=item_ids, kind="session")

    out = run_local(job, TrainData(train, None, item_ids, item_counts(train, len(item_ids))),
                    report=report, log=lambda m: print(m, flush=True))
    t0 = time.perf_counter()
    res = evaluate_next_item(box["model"].scorer(), test.offsets, test.items, (5, 10, 20), 512)
    res["eval_seconds"] = time.perf_counter() - t0
    res["examples_per_s"] = float(np.mean([h["examples_per_s"] for h in out["history"]]))
    res["loss"] = out["loss"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--layers", type=int, nargs="+", default=[100])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--loss", default="cross-entropy")
    ap.add_argument("--n-sample", type=int, default=2048)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--bpreg", type=float, default=0.0)
    ap.add_argument("--logq", type=float, default=1.0)
    ap.add_argument("--logq-mode", default="expected")
    ap.add_argument("--no-mask-sample-hits", action="store_true")
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--momentum", type=float, default=0.2)
    ap.add_argument("--optim", default="adagrad_momentum")
    ap.add_argument("--dense-item-rows", action="store_true",
                    help="optim.sparse_item_rows=false: update every item-table row each step (the old behaviour)")
    ap.add_argument("--dropout-hidden", type=float, default=0.4)
    ap.add_argument("--dropout-embed", type=float, default=0.0)
    ap.add_argument("--final-act", default="linear")
    ap.add_argument("--elu-param", type=float, default=1.0)
    ap.add_argument("--unconstrained", action="store_true")
    ap.add_argument("--embedding", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    res = run(args)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()

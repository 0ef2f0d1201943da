"""Plain (Ray-free) GRU4Rec run on rsc15-100k: accuracy and training speed.

Usage::

    .venv/bin/python benchmarks/gru4rec_plain.py --epochs 10
    .venv/bin/python benchmarks/gru4rec_plain.py --loss bpr-max --lr 0.05 --bpreg 1.0 \
        --final-act elu --dropout-hidden 0.0

Reads ``../shared/data/rsc15-100k`` (TSV ``SessionId ItemId Time``); the item index is the
training items ordered by popularity (descending, ties by item id); test events whose item is
not in train are dropped (then sessions shorter than 2 give no pair).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rayrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from rayrec.models.losses import LossConfig

from rayrec.platform.training.optim import OptimConfig, build_optimizer
from rayrec.platform.training.session_parallel import SessionArrays
from rayrec.platform.training.steps import evaluate, make_sampler, train_epoch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15-100k"
TRAIN = "yoochoose-clicks-100k_train_full.txt"
TEST = "yoochoose-clicks-100k_test.txt"


def load_rsc15(data_dir: Path = DATA) -> tuple[SessionArrays, SessionArrays, int]:
    """(train arrays, test arrays, n_items) with the popularity-ordered item index."""
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

    return arrays(tr), arrays(te), len(order)


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train, test, n_items = load_rsc15(Path(args.data))
    mcfg = GRU4RecConfig(
        layers=tuple(args.layers),
        dropout_p_hidden=args.dropout_hidden,
        dropout_p_embed=args.dropout_embed,
        final_act=args.final_act,
        elu_param=args.elu_param,
        constrained_embedding=not args.unconstrained,
        embedding=args.embedding,
    )
    lcfg = LossConfig(
        name=args.loss,
        n_sample=args.n_sample,
        sample_alpha=args.alpha,
        bpreg=args.bpreg,
        logq=args.logq,
        logq_mode=args.logq_mode,
        mask_sample_hits=not args.no_mask_sample_hits,
    )
    ocfg = OptimConfig(name=args.optim, lr=args.lr, momentum=args.momentum)
    gen = torch.Generator().manual_seed(args.seed)
    model = GRU4Rec(mcfg, n_items)
    model.reset_parameters(gen)
    opt = build_optimizer(model.parameters(), ocfg)
    sampler = make_sampler(train, n_items, lcfg, gen)
    log = []
    for ep in range(args.epochs):
        st = train_epoch(model, opt, train, lcfg, sampler, args.batch_size, gen)
        log.append(st)
        print(
            f"epoch {ep + 1}: loss {st['loss']:.4f} {st['events']:.0f} ev "
            f"{st['seconds']:.1f}s {st['events_per_s']:.0f} ev/s",
            flush=True,
        )
    t0 = time.perf_counter()
    res = evaluate(model, test, (5, 10, 20), 512)
    res["eval_seconds"] = time.perf_counter() - t0
    res["train_events_per_s"] = float(np.mean([s["events_per_s"] for s in log]))
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

"""HRNN-meta (seed 001) vs GRU4Rec on rsc15-100k ``train_full -> test`` (issue 16, Table 6).

    .venv/bin/python -m benchmarks.hrnn_meta [--epochs 10] [--seeds 0] [--rows gru4rec,off,time]

Rows (every run in this process, ``ray.use_ray=false``, test @20 after the last epoch):

* ``gru4rec``: ``jobs/configs/gru4rec_rsc15.yaml`` (the reference setting);
* ``off``: ``hrnn_meta`` with every extra off: inputs ``[item_id]``, ``decoder: id``,
  ``memory: session``, GRU4Rec's loss keys (cross-entropy + logQ, 2,048 popularity^0.5
  samples, cdf sampler), dropout 0.4, lr 0.2; issue 16 expects it to match GRU4Rec (R@20 >=
  0.668, MRR@20 >= 0.345 at 10 epochs).  It is not the same network: HRNN-meta has its own
  input embedding and a ``tanh`` input layer, GRU4Rec's reference setting ties the input
  embedding to the output weights (``constrained_embedding``);
* ``time``: ``off`` plus the time input (``inputs: [item_id, time]``).

Prints a Markdown table (command, date, machine, seeds) with R@20, MRR@20 and the last epoch's
training examples/s, each the mean over ``--seeds``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks._common import ensure_rsc15, machine, table, today

REPO = Path(__file__).resolve().parents[1]

_OFF = ["model.name=hrnn_meta", "model.inputs=[item_id]", "model.layers=[100]", "model.embedding=100",
        "model.mlp=100", "model.dropout_p_hidden=0.4", "model.decoder=id", "model.memory=session",
        "model.loss.name=cross-entropy", "model.loss.logq=1.0", "model.loss.n_sample=2048",
        "model.loss.sample_alpha=0.5", "model.loss.sampler=cdf", "optim.name=adagrad_momentum",
        "optim.lr=0.2", "optim.momentum=0.2"]
ROWS = {
    "gru4rec": ("GRU4Rec (reference config)", []),
    "off": ("hrnn_meta, extras off", _OFF),
    "time": ("hrnn_meta + time", [*_OFF, "model.inputs=[item_id,time]"]),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)}")
    ap.add_argument("--data", default=str(REPO / "outputs/rsc15-100k"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run (scaling.cpus_per_worker)")
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.trainer import fit

    root = ensure_rsc15(Path(args.data))
    tmp = Path(tempfile.mkdtemp(prefix="rayrec-bench-hrnn-"))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = []
    for key in [r.strip() for r in args.rows.split(",") if r.strip()]:
        label, overrides = ROWS[key]
        got = []
        for seed in seeds:
            base = REPO / "jobs/configs/gru4rec_rsc15.yaml" if key == "gru4rec" else None
            job = load_config(TrainJobConfig, base, [
                *overrides, "train.batch_size=32", f"scaling.cpus_per_worker={args.threads}", f"data.path={root}", "data.train_split=train_full", "data.valid_split=test",
                f"train.epochs={args.epochs}", f"train.seed={seed}", f"eval.every={args.epochs}",
                "eval.ks=[20]", "ray.use_ray=false", "run.checkpoint=false", f"run.storage_path={tmp}",
                f"run.name={key}-{seed}"])
            m = fit(job, log=lambda _m: None).metrics
            got.append(m)
            print(f"{key} seed {seed}: R@20 {m['recall@20']:.4f} MRR@20 {m['mrr@20']:.4f} "
                  f"{m['examples_per_s']:,.0f} examples/s", flush=True)
        n = len(got)
        out.append({"model": label, "R@20": sum(m["recall@20"] for m in got) / n,
                    "MRR@20": sum(m["mrr@20"] for m in got) / n,
                    "examples/s": sum(m["examples_per_s"] for m in got) / n})
    print(f"\n`python -m benchmarks.hrnn_meta --epochs {args.epochs} --seeds {args.seeds} "
          f"--threads {args.threads}`, "
          f"{today()}, {machine()}, seeds {seeds}, rsc15-100k train_full -> test\n")
    print(table(out, ["model", "R@20", "MRR@20", "examples/s"]))


if __name__ == "__main__":
    main()

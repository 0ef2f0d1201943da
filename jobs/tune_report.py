"""``python -m rayrec.jobs.tune_report <tune run dir> [--metric M] [--top 10]``

Writes ``curves.png`` (metric vs iteration, one line per trial; PBT's learning-rate
schedule when ``optim.lr`` varies within trials) and prints a table of the best trials.
The metric defaults to the run's own accuracy metric (``accuracy_metric`` of the tune job,
from the run's ``summary.json``: ``recall@20`` for session models, ``precision@10`` style
metrics for the daily model); a metric no trial reported is an error listing those that were.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd


def load_trials(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Per trial, every reported epoch in the order it happened: the trainable's own
    ``rayrec_history.jsonl`` when present (complete across PBT restores, which rewrite Tune's
    ``result.json``), else ``result.json``."""
    out = {}
    for trial in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        hist, res = trial / "rayrec_history.jsonl", trial / "result.json"
        src = hist if hist.is_file() else res
        if not src.is_file():
            continue
        rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
        if rows:
            df = pd.json_normalize(rows)
            if "time" in df:
                df = df.sort_values("time", kind="stable").reset_index(drop=True)
            out[trial.name] = df
    return out


def run_metric(run_dir: Path, trials: dict[str, pd.DataFrame]) -> str:
    """The run's accuracy metric: ``summary.json``'s ``accuracy_metric`` (written by
    ``rayrec.jobs.tune``), else the first ``@K`` metric the trials reported."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        m = json.loads(summary.read_text()).get("accuracy_metric")
        if m:
            return str(m)
    cols = [c for df in trials.values() for c in df.columns if "@" in c and not c.startswith("config.")]
    return cols[0] if cols else "loss"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rayrec.jobs.tune_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--metric", default=None, help="default: the run's accuracy metric (summary.json)")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    trials = load_trials(run_dir)
    if not trials:
        print(f"no trials with results under {run_dir}")
        return 1
    metric = args.metric or run_metric(run_dir, trials)
    reported = sorted({c for df in trials.values() for c in df.columns if "@" in c or c in ("loss", "fitness")})
    if not any(metric in df for df in trials.values()):
        print(f"tune_report: no trial reported {metric!r}; reported metrics: {', '.join(reported)}")
        return 2
    args.metric = metric
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lr_key = "config.optim.lr"
    has_lr = any(lr_key in df and df[lr_key].nunique() > 1 for df in trials.values())
    fig, axes = plt.subplots(1, 2 if has_lr else 1, figsize=(12 if has_lr else 7, 4.5), squeeze=False)
    for name, df in trials.items():
        x = df["epoch"] if "epoch" in df else (df["training_iteration"] if "training_iteration" in df
                                                 else range(len(df)))
        if args.metric in df:
            axes[0][0].plot(x, df[args.metric], marker="o", ms=3, label=name[-20:])
        if has_lr and lr_key in df:
            axes[0][1].step(x, df[lr_key], where="post", label=name[-20:])
    axes[0][0].set_xlabel("iteration (epoch)")
    axes[0][0].set_ylabel(f"validation {args.metric}")
    axes[0][0].set_title(run_dir.name)
    if has_lr:
        axes[0][1].set_xlabel("iteration (epoch)")
        axes[0][1].set_ylabel("optim.lr")
        axes[0][1].set_yscale("log")
        axes[0][1].set_title("learning-rate schedule per trial")
    if len(trials) <= 12:
        axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    png = run_dir / "curves.png"
    fig.savefig(png, dpi=110)
    rows = []
    for name, df in trials.items():
        last = df.iloc[-1]
        cfg_cols = {c[len("config."):]: last[c] for c in df.columns
                    if c.startswith("config.") and not c.startswith("config.__rayrec__")}
        rows.append({"trial": name[-24:], args.metric: last.get(args.metric), "fitness": last.get("fitness"),
                     "loss": last.get("loss"), "iters": len(df), **cfg_cols})
    table = pd.DataFrame(rows).sort_values(args.metric, ascending=False).head(args.top)
    print(table.to_string(index=False))
    print(f"\ncurves: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

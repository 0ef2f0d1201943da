"""GRU4Rec training throughput on rsc15-100k, reference config (examples/s).

    .venv/bin/python -m benchmarks.train_gru4rec [--epochs 2] [--no-ray]

Rows: the plain loop, which is the production loop in this process on in-memory data
(``rayrec.platform.training.loop.run_local``: the one loop of every model and engine, no Ray,
no checkpoints) with 1 and 2 torch threads; the production driver in-process
(``fit`` with ``ray.use_ray=false``: data loading, checkpoints every epoch); Ray Train with 1
worker, and 2 workers with DDP and with DeepSpeed ZeRO-2 (``--no-ray`` skips these).
Examples/s (training pairs per second) is measured on the last epoch (the first pays
start-up); validation is off.  Targets (issue 3): >= 5,000 examples/s in the best setting,
Ray Train 1 worker within 15% of the plain loop.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks._common import ensure_rsc15, machine, table, today

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--data", default=str(REPO / "outputs/rsc15-100k"))
    ap.add_argument("--no-ray", action="store_true", help="only the in-process rows")
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.families import SessionFamily
    from rayrec.platform.training.loop import run_local
    from rayrec.platform.training.trainer import fit

    root = ensure_rsc15(Path(args.data))
    tmp = Path(tempfile.mkdtemp(prefix="rayrec-bench-train-"))

    def job(*overrides: str) -> TrainJobConfig:
        return load_config(TrainJobConfig, REPO / "jobs/configs/gru4rec_rsc15.yaml",
                           [f"data.path={root}", "data.train_split=train_full", "data.valid_split=null",
                            f"train.epochs={args.epochs}",
                            f"run.storage_path={tmp}", *overrides])

    rows = []
    # plain loop = the production loop in this process on in-memory data: same model, loss,
    # sampler, optimiser and seeds as every other row; no Ray, no checkpoints
    data = SessionFamily.load(job(), with_valid=False)
    for threads in (1, 2):
        cfg = job("ray.use_ray=false", "run.checkpoint=false", f"scaling.torch_threads={threads}")
        m = run_local(cfg, data, log=lambda _m: None)
        rows.append({"setting": f"plain loop (run_local), {threads} thread(s)", "workers": 1,
                     "examples/s": m["examples_per_s"]})
        print(f"  {rows[-1]}", flush=True)
    settings = [
        ("fit in-process (ray.use_ray=false)", ["ray.use_ray=false", "scaling.torch_threads=2"]),
    ]
    if not args.no_ray:
        settings += [
            ("Ray Train, 1 worker (2 cpus)", ["scaling.num_workers=1", "scaling.cpus_per_worker=2"]),
            ("Ray Train, 2 workers DDP", ["scaling.num_workers=2", "scaling.cpus_per_worker=1"]),
            ("Ray Train, 2 workers DeepSpeed ZeRO-2", ["scaling.num_workers=2", "scaling.cpus_per_worker=1",
                                                     "scaling.engine=deepspeed", "scaling.zero_stage=2"]),
        ]
    for label, ov in settings:
        cfg = job(f"run.name=b{len(rows)}", *ov)
        t = time.perf_counter()
        res = fit(cfg, log=lambda _m: None)
        wall = time.perf_counter() - t
        rows.append({"setting": label, "workers": cfg.scaling.num_workers if cfg.ray.use_ray else 1,
                     "examples/s": res.metrics["examples_per_s"], "wall s (incl. start-up)": wall})
        print(f"  {rows[-1]}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nGRU4Rec training benchmark (reference config, rsc15-100k, last of {args.epochs} epochs) — "
          f"{machine()} — {today()}")
    print(table(rows, ["setting", "workers", "examples/s", "wall s (incl. start-up)"]))
    plain = max(r["examples/s"] for r in rows if r["setting"].startswith("plain"))
    one = next((r["examples/s"] for r in rows if r["setting"].startswith("Ray Train, 1")), None)
    if one is not None:
        print(f"\nRay Train 1 worker / best plain loop = {one / plain:.2f} (target >= 0.85)")


if __name__ == "__main__":
    main()

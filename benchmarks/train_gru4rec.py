"""GRU4Rec training throughput on rsc15-100k, reference config (events/s).

    .venv/bin/python -m benchmarks.train_gru4rec [--epochs 2]

Rows: a plain single-process loop of the same model (``steps.train_epoch``, no Ray), our
per-worker loop in-process (``scaling.num_workers=0``), Ray Train with 1 worker, and 2
workers with DDP and with DeepSpeed ZeRO-2.  Events/s is measured on the last epoch
(the first pays start-up); validation is off.  Targets (issue 3): >= 5,000 events/s in the
best setting, Ray Train 1 worker within 15% of the plain loop.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks._common import machine, table, today

REPO = Path(__file__).resolve().parents[1]


def _ensure_data(root: Path) -> str:
    if (root / "manifest.json").is_file():
        return str(root)
    from rayrec.platform.config import load_config
    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.preprocessing.pipeline import run_preprocess

    os.chdir(REPO)
    cfg = load_config(PreprocessJobConfig, REPO / "jobs/configs/preprocess_rsc15.yaml",
                      [f"output.path={root}", "ray.use_ray=false"])
    run_preprocess(cfg, log=lambda _m: None)
    return str(root)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--data", default=str(REPO / "outputs/rsc15-100k"))
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch
    from rayrec.models.gru4rec import GRU4Rec

    from rayrec.platform import data
    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.optim import build_optimizer
    from rayrec.platform.training.steps import make_sampler, train_epoch
    from rayrec.platform.training.trainer import fit

    root = _ensure_data(Path(args.data))
    base = load_config(TrainJobConfig, REPO / "jobs/configs/gru4rec_rsc15.yaml",
                       [f"data.path={root}", "data.valid_split=null", f"train.epochs={args.epochs}"])
    rows = []
    # plain loop: same model, loss, sampler, optimiser; no Ray, no checkpoints
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        train = data.session_arrays(root, "train_full")
        n_items = len(data.load_items(root))
        model = GRU4Rec(base.model, n_items)
        opt = build_optimizer(model.parameters(), base.optim)
        sampler = make_sampler(train, n_items, base.loss, torch.Generator().manual_seed(0))
        for _ in range(args.epochs):
            st = train_epoch(model, opt, train, base.loss, sampler, base.train.batch_size)
        rows.append({"setting": f"plain loop, {threads} thread(s)", "workers": 1, "events/s": st["events_per_s"]})
        print(f"  {rows[-1]}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="rayrec-bench-train-"))
    settings = [
        ("our loop in-process (num_workers=0)", ["scaling.num_workers=0", "scaling.torch_threads=2"]),
        ("Ray Train, 1 worker (2 cpus)", ["scaling.num_workers=1", "scaling.cpus_per_worker=2"]),
        ("Ray Train, 2 workers DDP", ["scaling.num_workers=2", "scaling.cpus_per_worker=1"]),
        ("Ray Train, 2 workers DeepSpeed ZeRO-2", ["scaling.num_workers=2", "scaling.cpus_per_worker=1",
                                                 "scaling.engine=deepspeed", "scaling.zero_stage=2"]),
    ]
    for label, ov in settings:
        cfg = load_config(TrainJobConfig, REPO / "jobs/configs/gru4rec_rsc15.yaml",
                          [f"data.path={root}", "data.valid_split=null", f"train.epochs={args.epochs}",
                           f"run.storage_path={tmp}", f"run.name=b{len(rows)}", *ov])
        t = time.perf_counter()
        res = fit(cfg, log=lambda _m: None)
        wall = time.perf_counter() - t
        rows.append({"setting": label, "workers": max(1, cfg.scaling.num_workers),
                     "events/s": res.metrics["events_per_s"], "wall s (incl. start-up)": wall})
        print(f"  {rows[-1]}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nGRU4Rec training benchmark (reference config, rsc15-100k, last of {args.epochs} epochs) — "
          f"{machine()} — {today()}")
    print(table(rows, ["setting", "workers", "events/s", "wall s (incl. start-up)"]))
    plain = max(r["events/s"] for r in rows if r["setting"].startswith("plain"))
    one = next(r["events/s"] for r in rows if r["setting"].startswith("Ray Train, 1"))
    print(f"\nRay Train 1 worker / best plain loop = {one / plain:.2f} (target >= 0.85)")


if __name__ == "__main__":
    main()

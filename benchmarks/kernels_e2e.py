"""Issue 8 end to end: GRU4Rec and the daily model trained with ``RAYREC_KERNELS=reference`` and
``RAYREC_KERNELS=auto`` must reach the same metrics (within noise); prints them with the speed.

Usage::

    .venv/bin/python -m benchmarks.kernels_e2e                      # the full comparison
    .venv/bin/python -m benchmarks.kernels_e2e --quick              # smoke test, synthetic data
    .venv/bin/python -m benchmarks.kernels_e2e --only gru4rec --backends reference auto triton

* GRU4Rec: ``jobs/configs/gru4rec_rsc15.yaml`` (100 units, cross-entropy + logQ over 32 targets
  + 2048 extra samples, Adagrad-momentum) on rsc15-100k (``outputs/rsc15-100k``, prepared from
  ``../shared/data/rsc15-100k`` with ``jobs/configs/preprocess_rsc15.yaml`` when missing), the
  production training loop of ``rayrec.platform.training.loop`` in process (``fit`` with
  ``ray.use_ray=false``), ``--epochs`` epochs (1), on CUDA when there is one. Recall@20 /
  MRR@20 on the test split (next-item protocol, the loop's validation after the last epoch)
  and training examples/s of the last epoch. Fused ops on this path: ``sampled_ranking_loss``,
  ``gru_step`` (and ``gru_step`` while evaluating).
* Daily model: ``jobs/configs/daily_ml100k.yaml`` on ``../shared/data/ml-100k`` (as-of
  1998-03-15), soft split with the *parametric* decay (``ti = 40``; the config's learned
  decay of eq. 4 does not use the fused input layer), ``--daily-epochs`` epochs (5).
  Precision@K / PCC@K on the validation windows and training examples/s. Fused ops:
  ``decayed_embedding_bag`` (input layer) and ``topk_scores`` (validation top-K). The daily
  trainer keeps its tensors on the CPU, so there ``auto`` resolves to the reference.

Every (model, backend) run is a fresh subprocess with ``RAYREC_KERNELS`` set in its
environment and the same seeds. ``--quick`` swaps the data sets for small synthetic ones and
trains a few steps: it only checks that the script works. A missing data set is skipped with
a message. On a CPU-only machine ``auto`` is the reference: the rows must then be identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import machine, table, today

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAYREC_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULT = "KERNELS_E2E_RESULT "
AS_OF = "1998-03-15"


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------


def _gru4rec_data(args: argparse.Namespace, work: Path) -> str | None:
    """A preprocessed session data set (``manifest.json``), or None with a message."""
    from rayrec.platform.config import load_config
    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.preprocessing.pipeline import run_preprocess

    if args.quick:
        from rayrec.platform.preprocessing.synthetic import generate_events, write_rsc15_style

        src = write_rsc15_style(generate_events(6000, n_items=300, seed=0, days=6), work / "ev.tsv")
        overrides = ["source.format=rsc15_prepared", f"source.path={src}", "split.test_days=1",
                     "split.valid_days=1", f"output.path={work / 'sessions'}", "ray.use_ray=false",
                     "filter.min_item_support=2"]
        run_preprocess(load_config(PreprocessJobConfig, None, overrides), log=lambda _m: None)
        return str(work / "sessions")
    root = Path(args.data)
    if (root / "manifest.json").is_file():
        return str(root)
    raw = SHARED / "rsc15-100k"
    if not (raw / "yoochoose-clicks-100k_train_full.txt").is_file():
        print(f"GRU4Rec: skipped: {root} is not prepared and {raw} is absent "
              "(set RAYREC_SHARED_DATA or --data)")
        return None
    cwd = os.getcwd()
    os.chdir(REPO)  # the preprocess config's paths are relative to the repository
    try:
        cfg = load_config(PreprocessJobConfig, REPO / "jobs/configs/preprocess_rsc15.yaml",
                          [f"output.path={root}", "ray.use_ray=false"])
        run_preprocess(cfg, log=lambda _m: None)
    finally:
        os.chdir(cwd)
    return str(root)


def _daily_data(args: argparse.Namespace, work: Path) -> str | None:
    """A ``date_windows`` preprocess of ml-100k for ``AS_OF`` (or "synthetic" with --quick)."""
    if args.quick:
        return "synthetic"
    udata = SHARED / "ml-100k" / "u.data"
    if not udata.is_file():
        print(f"daily model: skipped: {udata} is absent (set RAYREC_SHARED_DATA)")
        return None
    from rayrec.jobs import daily as daily_job
    from rayrec.platform.config import load_config
    from rayrec.platform.daily.config import DailyJobConfig

    day_dir = work / "daily" / AS_OF
    cfg = load_config(DailyJobConfig, REPO / "jobs/configs/daily_ml100k.yaml",
                      [f"source.path={udata}", f"work_dir={work / 'daily'}"])
    day_dir.mkdir(parents=True, exist_ok=True)
    daily_job.preprocess_for_date(cfg, daily_job.parse_as_of(AS_OF), day_dir, lambda _m: None)
    return str(day_dir / "data")


# ------------------------------------------------------------------------------------------
# one run (in a subprocess)
# ------------------------------------------------------------------------------------------


def _run_gru4rec(spec: dict) -> dict:
    import torch

    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.trainer import fit

    gpu = torch.cuda.is_available() and not spec["cpu"]
    ov = [f"data.path={spec['data']}", "data.train_split=train_full", "data.valid_split=test",
          f"train.epochs={spec['epochs']}", "ray.use_ray=false",
          f"scaling.use_gpu={str(gpu).lower()}", f"run.storage_path={spec['storage']}",
          f"run.name=gru4rec_{spec['backend']}", "run.keep_checkpoints=1"]
    if spec["quick"]:
        ov += ["train.max_steps_per_epoch=30", "model.loss.n_sample=64", "model.layers=[32]"]
    cfg = load_config(TrainJobConfig, REPO / "jobs/configs/gru4rec_rsc15.yaml", ov)
    t = time.perf_counter()
    m = fit(cfg, log=lambda _m: None).metrics
    return {"recall@20": m["recall@20"], "mrr@20": m["mrr@20"], "loss": m["loss"],
            "examples/s": m["examples_per_s"], "wall s": time.perf_counter() - t,
            "device": "cuda" if gpu else "cpu"}


def _run_daily(spec: dict) -> dict:
    from rayrec.platform.config import apply_overrides
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.trainer import fit

    ov = ["model.name=daily_nn", "model.variant=soft_split", "model.decay=parametric", "model.ti=40",
          "model.to=4", f"train.epochs={spec['epochs']}", "ray.use_ray=false", "run.checkpoint=false",
          f"run.storage_path={spec['storage']}", f"run.name=daily_{spec['backend']}"]
    t = time.perf_counter()
    if spec["data"] == "synthetic":
        import numpy as np

        from rayrec.platform.daily.data import synthetic_windows
        from rayrec.platform.sections import SyntheticData
        from rayrec.platform.training.families import TrainData
        from rayrec.platform.training.loop import run_local

        cfg = TrainJobConfig.model_validate(apply_overrides(
            {}, [*ov, "model.hidden_sizes=[32,16]", "train.batch_size=32", "eval.ks=[1,5,10]"]))
        syn = SyntheticData(n_users=300, n_items=60, items_per_user=6, seed=0)
        train = synthetic_windows(syn)
        data = TrainData(train, synthetic_windows(syn.model_copy(update={"seed": 1, "n_users": 200})),
                         [str(i) for i in range(60)], np.bincount(train.x_items, minlength=60))
        m = run_local(cfg, data, log=lambda _m: None)
    else:
        import yaml

        base = yaml.safe_load((REPO / "jobs/configs/daily_ml100k.yaml").read_text())["train"]
        cfg = TrainJobConfig.model_validate(apply_overrides(base, [*ov, f"data.path={spec['data']}"]))
        m = fit(cfg, log=lambda _m: None).metrics
    ks = cfg.eval.ks
    out = {f"precision@{k}": m[f"precision@{k}"] for k in ks}
    out[f"pcc@{ks[-1]}"] = m[f"pcc@{ks[-1]}"]
    out.update({"loss": m["loss"], "examples/s": m["examples_per_s"],
                "wall s": time.perf_counter() - t, "device": "cpu"})
    return out


def _worker(kind: str, spec: dict) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    res = _run_gru4rec(spec) if kind == "gru4rec" else _run_daily(spec)
    print(RESULT + json.dumps(res), flush=True)


def _spawn(kind: str, backend: str, spec: dict) -> dict:
    env = dict(os.environ, RAYREC_KERNELS=backend)
    env.setdefault("DS_ACCELERATOR", "cpu")
    cmd = [sys.executable, "-m", "benchmarks.kernels_e2e", "--worker", kind,
           "--spec", json.dumps({**spec, "backend": backend})]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"{kind} with RAYREC_KERNELS={backend} failed:\n" + "\n".join(tail))
    return {"backend": backend, **json.loads(lines[-1][len(RESULT):])}


def _compare(rows: list[dict], keys: list[str]) -> str:
    ref = next((r for r in rows if r["backend"] == "reference"), None)
    if ref is None:
        return ""
    parts = []
    for r in rows:
        if r is not ref:
            diffs = ", ".join(f"{k} {r[k] - ref[k]:+.4f}" for k in keys)
            parts.append(f"{r['backend']} - reference: {diffs}")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["gru4rec", "daily"], default=None)
    ap.add_argument("--backends", nargs="+", default=["reference", "auto"],
                    choices=["reference", "auto", "triton", "cuda"])
    ap.add_argument("--epochs", type=int, default=1, help="GRU4Rec epochs")
    ap.add_argument("--daily-epochs", type=int, default=5)
    ap.add_argument("--data", default=str(REPO / "outputs/rsc15-100k"),
                    help="prepared rsc15-100k (written there when missing)")
    ap.add_argument("--cpu", action="store_true", help="GRU4Rec on the CPU even with CUDA")
    ap.add_argument("--quick", action="store_true",
                    help="small synthetic data, a few steps: checks that the script runs")
    ap.add_argument("--worker", choices=["gru4rec", "daily"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker, json.loads(args.spec))
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    work = Path(tempfile.mkdtemp(prefix="rayrec-kernels-e2e-"))
    try:
        mode = "quick (synthetic data, a few steps)" if args.quick else "full"
        print(f"# fused ops end to end (issue 8), {mode} -- {machine()} -- {today()}", flush=True)
        if args.only in (None, "gru4rec"):
            data = _gru4rec_data(args, work)
            if data is not None:
                spec = {"data": data, "epochs": 1 if args.quick else args.epochs,
                        "quick": args.quick, "cpu": args.cpu, "storage": str(work / "runs")}
                rows = []
                for b in args.backends:
                    rows.append(_spawn("gru4rec", b, spec))
                    print(f"  gru4rec {rows[-1]}", flush=True)
                print(f"\nGRU4Rec, {Path(data).name}, {spec['epochs']} epoch(s), next-item protocol on test")
                print(table(rows, ["backend", "device", "recall@20", "mrr@20", "loss", "examples/s", "wall s"]))
                print(_compare(rows, ["recall@20", "mrr@20"]))
        if args.only in (None, "daily"):
            data = _daily_data(args, work)
            if data is not None:
                epochs = 2 if args.quick else args.daily_epochs
                spec = {"data": data, "epochs": epochs, "quick": args.quick,
                        "storage": str(work / "runs")}
                rows = []
                for b in args.backends:
                    rows.append(_spawn("daily", b, spec))
                    print(f"  daily {rows[-1]}", flush=True)
                keys = [k for k in rows[0] if k.startswith(("precision@", "pcc@"))]
                label = "synthetic" if args.quick else f"ml-100k as-of {AS_OF}"
                print(f"\nDaily model (soft split, parametric decay ti=40), {label}, {epochs} epoch(s), "
                      "future-window protocol on the validation windows")
                print(table(rows, ["backend", "device", *keys, "loss", "examples/s", "wall s"]))
                print(_compare(rows, keys))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

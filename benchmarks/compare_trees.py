"""GRU4Rec training speed of two rayrec checkouts side by side, in one run.

Usage::

    .venv/bin/python -m benchmarks.compare_trees --old /path/to/old/checkout \\
        [--new .] [--data outputs/rsc15-100k] [--rounds 3] [--epochs 2] [--threads 2]

Each checkout trains with its own interpreter (``<root>/.venv/bin/python``, or
``--old-python`` / ``--new-python``) and its own copy of ``jobs/configs/gru4rec_rsc15.yaml``:
``python -m rayrec.jobs.train -c jobs/configs/gru4rec_rsc15.yaml train.epochs=E data.path=DATA
...``, alternating old, new, old, new for ``--rounds`` rounds per mode (in-process loop, Ray
Train 1 worker), so machine load hits both alike.  The rate is the last epoch's
(``epoch E/E ... N events/s`` before issue 12, ``examples/s`` after); the first epoch pays
start-up.  The in-process switch is ``ray.use_ray=false`` (``scaling.num_workers=0`` for a
checkout from before issue 12: tried when the first is refused).  Prints one row per run and
the mean after/before ratio per mode; identical final losses across runs are printed too (same
seed, same data: they should agree).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import machine, table, today

EPOCH = re.compile(r"epoch (\d+)/(\d+) loss ([0-9.]+) ([0-9,]+) (?:events|examples)/s")
MODES = {"in-process": ["ray.use_ray=false"], "Ray Train 1 worker": ["scaling.num_workers=1"]}
LEGACY_IN_PROCESS = ["scaling.num_workers=0"]


def run(root: Path, python: str, overrides: list[str]) -> tuple[float, float, float]:
    """(last-epoch rate, last-epoch loss, wall s) of one training run in ``root``."""
    t0 = time.perf_counter()
    p = subprocess.run([python, "-m", "rayrec.jobs.train", "-c", "jobs/configs/gru4rec_rsc15.yaml",
                        *overrides], cwd=root, text=True, capture_output=True,
                       env={**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")})
    wall = time.perf_counter() - t0
    out = p.stdout + p.stderr
    if p.returncode != 0:
        raise RuntimeError(f"{root}: exit {p.returncode}\n{out[-2000:]}")
    last = [m for m in EPOCH.finditer(out) if m.group(1) == m.group(2)]
    if not last:
        raise RuntimeError(f"{root}: no final epoch line in the output\n{out[-2000:]}")
    m = last[-1]
    return float(m.group(4).replace(",", "")), float(m.group(3)), wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, type=Path)
    ap.add_argument("--new", default=Path("."), type=Path)
    ap.add_argument("--old-python")
    ap.add_argument("--new-python")
    ap.add_argument("--data", default="outputs/rsc15-100k")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    trees = {"before": (args.old.resolve(), args.old_python or str(args.old.resolve() / ".venv/bin/python")),
             "after": (args.new.resolve(), args.new_python or str(args.new.resolve() / ".venv/bin/python"))}
    data = str(Path(args.data).resolve())
    storage = tempfile.mkdtemp(prefix="rayrec-compare-")
    rows, rates = [], {}
    for mode, mode_ov in MODES.items():
        for r in range(args.rounds):
            for tree, (root, python) in trees.items():
                ov = [*mode_ov, f"train.epochs={args.epochs}", f"data.path={data}",
                      "data.train_split=train_full", "data.valid_split=test",  # the published protocol
                      f"run.name={tree}-{mode.replace(' ', '_')}-{r}", f"run.storage_path={storage}/{tree}",
                      f"scaling.cpus_per_worker={args.threads}", f"scaling.torch_threads={args.threads}"]
                try:
                    rate, loss, wall = run(root, python, ov)
                except RuntimeError as exc:  # a checkout from before issue 12: no ray.use_ray
                    if mode_ov is not MODES["in-process"] or "use_ray" not in str(exc):
                        raise
                    rate, loss, wall = run(root, python, [*LEGACY_IN_PROCESS, *ov[1:]])
                rates.setdefault((mode, tree), []).append(rate)
                rows.append({"mode": mode, "tree": tree, "round": r + 1, "examples/s": rate,
                             "final loss": loss, "wall s": wall, "load": os.getloadavg()[0]})
                print(rows[-1], flush=True)
    print(f"\n{machine()}, {today()}, {args.epochs} epochs, {args.threads} threads, data {data}\n")
    print(table(rows, list(rows[0])))
    summary = [{"mode": m, "before": sum(rates[(m, "before")]) / len(rates[(m, "before")]),
                "after": sum(rates[(m, "after")]) / len(rates[(m, "after")])} for m in MODES]
    for s in summary:
        s["after / before"] = s["after"] / s["before"]
    print()
    print(table(summary, list(summary[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

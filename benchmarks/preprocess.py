"""Preprocessing throughput: synthetic 1M and 5M events through the job on 2 CPUs.

    .venv/bin/python -m benchmarks.preprocess [--sizes 1000000 5000000]

Rows: the job on Ray Data (local Ray, 2 CPUs: validate + dedupe + sessionize per key
partition in parallel tasks, global steps vectorised) and the same steps in one process
with pandas only (``ray.use_ray=false``).  Input: ``user_id,item_id,ts`` CSV (no session
ids, so sessionizing runs), session_time split with a validation split.
Targets (issue 2): 1M events end to end <= 60 s; 5M <= 5.5x the 1M time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks._common import machine, table, today


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--partitions", type=int, default=8)
    args = ap.parse_args()
    from rayrec.platform.config import load_config
    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.preprocessing.pipeline import run_preprocess
    from rayrec.platform.preprocessing.synthetic import generate_events, write_user_csv
    from rayrec.platform.runtime import init_ray

    init_ray(None, 2, log_to_driver=False)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="rayrec-bench-pp-"))
    for n in args.sizes:
        src = write_user_csv(generate_events(n, n_items=20_000, seed=1, days=30), tmp / f"ev{n}.csv")
        for use_ray in (True, False):
            cfg = load_config(
                PreprocessJobConfig, None,
                ["source.format=csv", f"source.path={src}",
                 "source.column_map={user_id: user_id, item_id: item_id, ts: ts}",
                 f"output.path={tmp / f'out{n}_{use_ray}'}", "split.test_days=2",
                 f"ray.use_ray={use_ray}", f"ray.partitions={args.partitions}"],
            )
            t = time.perf_counter()
            m = run_preprocess(cfg, log=lambda _m: None)
            secs = time.perf_counter() - t
            timings = json.loads((Path(cfg.output.path) / "timings.json").read_text())
            rows.append({
                "events": n, "mode": "ray data (2 cpus)" if use_ray else "pandas, 1 process",
                "seconds": secs, "events/s": n / secs,
                "read": timings["read"], "validate+sessionize": timings["validate_sessionize"],
                "filter+index+split": timings["filter_index_split"], "write": timings["write"],
                "train events": m["split"]["splits"]["train_full"]["events"],
            })
            print(f"  {n:>9,} {'ray' if use_ray else 'pandas'}: {secs:.1f}s", flush=True)
    print(f"\npreprocess benchmark — {machine()} — {today()}")
    print(table(rows, ["events", "mode", "seconds", "events/s", "read", "validate+sessionize",
                       "filter+index+split", "write", "train events"]))
    ray_rows = {r["events"]: r["seconds"] for r in rows if r["mode"].startswith("ray")}
    if len(ray_rows) >= 2:
        lo, hi = min(ray_rows), max(ray_rows)
        print(f"\nscaling: {hi:,} events took {ray_rows[hi] / ray_rows[lo]:.2f}x the {lo:,}-event time "
              f"(target <= {5.5 * hi / lo / 5:.1f}x)")


if __name__ == "__main__":
    main()

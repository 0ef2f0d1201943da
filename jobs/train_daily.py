"""``python -m rayrec.jobs.train_daily --config jobs/configs/daily_synthetic_1m.yaml [k=v ...]``

Trains the daily two-layer model (seed 000) from a ``DailyTrainJobConfig``: in-process
(``scaling.num_workers=0``) or on Ray Train with the catalog split across the workers
(tensor-parallel input and output layers; ``scaling.engine=deepspeed`` for DeepSpeed).
Prints the last epoch's metrics, per-rank parameter bytes and peak memory.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rayrec.jobs import _cli

from rayrec.platform.daily.config import DailyTrainJobConfig


def main(argv: Sequence[str] | None = None) -> int:
    from rayrec.platform.daily.data import DailyDataError
    from rayrec.platform.daily.trainer import fit_daily
    from rayrec.platform.data import DataError

    args = _cli.parser("train_daily", __doc__.splitlines()[2]).parse_args(_cli.argv_or_sys(argv))
    cfg = _cli.load(DailyTrainJobConfig, args, "train_daily")
    try:
        res = fit_daily(cfg)
    except (DailyDataError, DataError, ValueError) as exc:
        print(f"rayrec.jobs.train_daily: error: {exc}", file=sys.stderr)
        return 1
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.metrics.items()
             if k not in ("learned_decay", "history")}
    print(f"final metrics: {shown}")
    print(f"checkpoint: {res.checkpoint_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

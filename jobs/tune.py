"""``python -m rayrec.jobs.tune --config jobs/configs/tune_gru4rec_gentune.yaml [k=v ...]``

Ray Tune over a rayrec training config: random / grid / ASHA / PBT / PB2 / GenTune (seed
004, Algorithm 2).  Writes TensorBoard files per trial (``tensorboard --logdir
<run.storage_path>``), ``summary.json`` and ``best_config.yaml`` (runs as is with
``rayrec.jobs.train``), then retrains the best configuration on ``final_train_split`` and
evaluates it once on ``final_test_split``.  ``python -m rayrec.jobs.tune_report <run dir>``
plots the curves.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rayrec.jobs import _cli
from rayrec.platform.tuning.run import TuneJobConfig


def main(argv: Sequence[str] | None = None) -> int:
    from rayrec.platform.config import ConfigError
    from rayrec.platform.tuning.run import final_evaluation, run_tune

    args = _cli.parser("tune", __doc__, TuneJobConfig).parse_args(_cli.argv_or_sys(argv))
    cfg = _cli.load(TuneJobConfig, args, "tune")
    try:
        summary = run_tune(cfg)
    except ConfigError as exc:
        print(f"rayrec.jobs.tune: error: {exc}", file=sys.stderr)
        return 2
    if cfg.final_train_split and cfg.final_test_split:
        out = Path(summary["best_config_yaml"]).parent
        final = final_evaluation(summary["best_config_yaml"], cfg.final_train_split, cfg.final_test_split, str(out),
                                 epochs=cfg.final_epochs)
        summary["final"] = final
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        print(f"final ({cfg.final_train_split} -> {cfg.final_test_split}, evaluated once): "
              f"recall@20={final.get('recall@20', float('nan')):.4f} mrr@20={final.get('mrr@20', float('nan')):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m rayrec.jobs.train --config jobs/configs/gru4rec_rsc15.yaml [k=v ...]``

Trains any registered model (``model.name``: gru4rec, daily_nn, ...) on its data: in this
process (``ray.use_ray=false``) or on Ray Train (``scaling.engine``: ddp, deepspeed with ZeRO
0-3, tensor_parallel for models that split their catalog-wide tables across workers).
Reports validation metrics with a checkpoint every ``eval.every`` epochs; re-running the same
``run.name`` continues from its latest checkpoint; ``run.max_failures`` restarts the worker
group from it after a worker dies.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rayrec.jobs import _cli
from rayrec.platform.training.config import TrainJobConfig

CONFIGS = Path(__file__).parent / "configs"


def main(argv: Sequence[str] | None = None) -> int:
    from rayrec.platform.daily.data import DailyDataError
    from rayrec.platform.data import DataError
    from rayrec.platform.training.families import TrainingInputError
    from rayrec.platform.training.trainer import fit

    args = _cli.parser("train", __doc__, TrainJobConfig).parse_args(_cli.argv_or_sys(argv))
    cfg = _cli.load(TrainJobConfig, args, "train")
    try:
        res = fit(cfg)
    except (DataError, DailyDataError, TrainingInputError) as exc:
        print(f"rayrec.jobs.train: error: {exc}", file=sys.stderr)
        return 1
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.metrics.items()
             if not isinstance(v, (list, dict))}
    print(f"final metrics: {shown}")
    print(f"checkpoint: {res.checkpoint_dir}")
    from rayrec.models import registry

    if registry.get(cfg.model.name).kind == "embedding" and res.checkpoint_dir:
        from rayrec.platform.embeddings import publish_checkpoint

        version = publish_checkpoint(cfg, res.checkpoint_dir, res.run_dir)
        print(f"embeddings: published version {version} ({res.run_dir}@current)")
    return 0


def run_training_for_demo(data_root: str, runs_dir: Path, epochs: int) -> tuple[dict[str, Any], str | None]:
    """The demo's GRU4Rec step: the reference config, shortened, on one Ray Train worker."""
    from rayrec.platform.config import load_config
    from rayrec.platform.training.trainer import fit

    cfg = load_config(
        TrainJobConfig, CONFIGS / "gru4rec_rsc15.yaml",
        [f"data.path={data_root}", "data.train_split=train_full", "data.valid_split=test",
         f"train.epochs={epochs}", f"run.storage_path={runs_dir}",
         "run.name=demo-gru4rec", "scaling.num_workers=1", "scaling.cpus_per_worker=2"],
    )
    res = fit(cfg)
    return res.metrics, res.checkpoint_dir


if __name__ == "__main__":
    raise SystemExit(main())

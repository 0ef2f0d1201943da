"""``python -m rayrec.jobs.train --config jobs/configs/gru4rec_rsc15.yaml [k=v ...]``

Trains a session model (GRU4Rec) on a preprocessed dataset: in-process
(``scaling.num_workers=0``) or on Ray Train with DDP or DeepSpeed ZeRO 0-3.  Reports
validation metrics with a checkpoint every epoch; re-running the same ``run.name``
continues from its last checkpoint.
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
    from rayrec.platform.data import DataError
    from rayrec.platform.training.loop import TrainingInputError
    from rayrec.platform.training.trainer import fit

    argv = _cli.argv_or_sys(argv)
    args = _cli.parser("train", __doc__.splitlines()[2]).parse_args(argv)
    if _model_name(args) == "daily_nn":  # the daily model has its own catalog-scale trainer
        from rayrec.jobs import train_daily

        return train_daily.main(argv)
    cfg = _cli.load(TrainJobConfig, args, "train")
    try:
        res = fit(cfg)
    except (DataError, TrainingInputError) as exc:
        print(f"rayrec.jobs.train: error: {exc}", file=sys.stderr)
        return 1
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.metrics.items()}
    print(f"final metrics: {shown}")
    print(f"checkpoint: {res.checkpoint_dir}")
    return 0


def _model_name(args) -> str | None:  # noqa: ANN001
    """``model.name`` from the YAML file and overrides, before full validation."""
    import yaml

    from rayrec.platform.config import apply_overrides

    data = {}
    if args.config and Path(args.config).is_file():
        data = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    try:
        data = apply_overrides(data, args.overrides)
    except ValueError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model.get("name") if isinstance(model, dict) else None


def run_training_for_demo(data_root: str, runs_dir: Path, epochs: int) -> tuple[dict[str, Any], str | None]:
    """The demo's GRU4Rec step: the reference config, shortened, on one Ray Train worker."""
    from rayrec.platform.config import load_config
    from rayrec.platform.training.trainer import fit

    cfg = load_config(
        TrainJobConfig, CONFIGS / "gru4rec_rsc15.yaml",
        [f"data.path={data_root}", f"train.epochs={epochs}", f"run.storage_path={runs_dir}",
         "run.name=demo-gru4rec", "scaling.num_workers=1", "scaling.cpus_per_worker=2"],
    )
    res = fit(cfg)
    return res.metrics, res.checkpoint_dir


if __name__ == "__main__":
    raise SystemExit(main())

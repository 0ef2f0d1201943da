"""``python -m rayrec.jobs.batch_predict checkpoint=DIR data_path=DIR as_of=YYYY-MM-DD [k=v ...]``

Scores every user of a daily data directory with a daily-model checkpoint
(``rayrec.jobs.train`` with ``model.name: daily_nn``) on Ray Data (``map_batches`` with a class UDF: the model is loaded once per actor), keeps each user's
top-K products not already consumed, and publishes them to the recommendation store as one
version tagged with the model version (a hash of the weights) and the as-of date.
Publishing the same (as-of, model version) again returns the existing version.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rayrec.jobs import _cli
from rayrec.platform.daily.config import BatchPredictJobConfig
from rayrec.platform.sections import resolve_use_ray


def run_batch_predict(cfg: BatchPredictJobConfig, log=print) -> dict:
    from pathlib import Path

    from rayrec.platform.checkpoint import load_checkpoint
    from rayrec.platform.daily.data import build_windows, catalog_for_items, read_split
    from rayrec.platform.daily.predict import batch_predict, model_version_of, publish_predictions
    from rayrec.platform.data import load_items
    from rayrec.platform.store import SQLiteRecommendationStore

    ck = load_checkpoint(cfg.checkpoint)
    cat = catalog_for_items(load_items(cfg.data_path), ck.item_ids)
    as_of = cfg.as_of.isoformat()
    windows = build_windows(read_split(cfg.data_path, cfg.predict_split), None, as_of, cat,
                            name=f"{cfg.data_path}:{cfg.predict_split}")
    use_ray = resolve_use_ray(cfg.ray.use_ray, cfg.ray.address, windows.n_users, cfg.ray.auto_max_rows,
                              "users to score")
    if use_ray:
        from rayrec.platform.runtime import init_ray

        init_ray(cfg.ray.address, cfg.ray.num_cpus)
    rows = batch_predict(cfg.checkpoint, windows, cfg.predict, use_ray=use_ray)
    mv = cfg.model_version or model_version_of(cfg.checkpoint)
    Path(cfg.store.path).parent.mkdir(parents=True, exist_ok=True)
    with SQLiteRecommendationStore(cfg.store.path, keep_versions=cfg.store.keep_versions) as store:
        version = publish_predictions(store, rows, as_of, mv)
    log(f"published {len(rows)} users as version {version} (model {mv}, as-of {as_of})")
    return {"version": version, "model_version": mv, "users": len(rows)}


def main(argv: Sequence[str] | None = None) -> int:
    from rayrec.platform.checkpoint import CheckpointError
    from rayrec.platform.daily.data import DailyDataError
    from rayrec.platform.data import DataError

    args = _cli.parser("batch_predict", __doc__, BatchPredictJobConfig).parse_args(_cli.argv_or_sys(argv))
    cfg = _cli.load(BatchPredictJobConfig, args, "batch_predict")
    try:
        run_batch_predict(cfg)
    except (CheckpointError, DailyDataError, DataError, ValueError) as exc:
        print(f"rayrec.jobs.batch_predict: error: {exc} (nothing was published)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

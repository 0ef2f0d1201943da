"""``python -m rayrec.jobs.evaluate [--config FILE] data.path=... checkpoints.<label>=<dir> [k=v ...]``

Evaluates baselines and trained checkpoints on a preprocessed dataset under the
``next_item`` protocol and prints one table (every row records its protocol).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from rayrec.jobs import _cli
from rayrec.platform.config import StrictModel
from rayrec.platform.sections import DataSection, EvalSection


class EvaluateJobConfig(StrictModel):
    data: DataSection = Field(default_factory=DataSection)
    """``path``, ``train_split`` (baselines are fitted on it) and ``test_split``."""
    protocol: str = "next_item"
    baselines: list[str] = Field(default_factory=lambda: ["pop", "spop", "item_knn"])
    baseline_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    checkpoints: dict[str, str] = Field(default_factory=dict)
    """label -> checkpoint directory of a trained session model."""
    eval: EvalSection = Field(default_factory=EvalSection)
    output: str | None = None
    """Write the results as JSON here too."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in (("cutoffs", "eval.ks"), ("batch_size", "eval.batch_size")):
                if old in data:
                    raise ValueError(f"{old} was renamed: use {new}")
        return data


def run(cfg: EvaluateJobConfig, log=print) -> dict[str, dict[str, Any]]:
    from rayrec.platform import data
    from rayrec.platform.evaluation.protocols import evaluate_next_item
    from rayrec.platform.evaluation.runner import evaluate_baselines, scorer_from_checkpoint

    if cfg.protocol != "next_item":
        raise ValueError(f"protocol: only 'next_item' is evaluated by this job so far, got {cfg.protocol!r}")
    root = cfg.data.path
    results = evaluate_baselines(
        root, cfg.data.train_split, cfg.data.test_split, cfg.baselines, cfg.eval.ks, cfg.baseline_params, log=log
    )
    if cfg.checkpoints:
        item_ids = data.load_items(root)["item_id"].astype(str).tolist()
        test = data.session_arrays(root, cfg.data.test_split)
        for label, path in cfg.checkpoints.items():
            scorer, ck = scorer_from_checkpoint(path, item_ids)
            res = evaluate_next_item(scorer, test.offsets, test.items, tuple(cfg.eval.ks), cfg.eval.batch_size)
            res["checkpoint"] = str(path)
            results[label] = res
            log(f"  {label:<10} recall@20={res.get('recall@20', float('nan')):.4f} mrr@20={res.get('mrr@20', float('nan')):.4f}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    from rayrec.platform.checkpoint import CheckpointError
    from rayrec.platform.data import DataError
    from rayrec.platform.evaluation.runner import format_table

    args = _cli.parser("evaluate", __doc__.splitlines()[2]).parse_args(_cli.argv_or_sys(argv))
    cfg = _cli.load(EvaluateJobConfig, args, "evaluate")
    try:
        results = run(cfg)
    except (DataError, CheckpointError, ValueError, KeyError) as exc:
        print(f"rayrec.jobs.evaluate: error: {exc}", file=sys.stderr)
        return 1
    print(format_table(results, cfg.eval.ks[-3:]))
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(
            json.dumps({"config": cfg.model_dump(mode="json"), "results": results}, indent=1, default=str)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

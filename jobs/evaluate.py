"""``python -m rayrec.jobs.evaluate [--config FILE] data.path=... checkpoints.<label>=<dir> [k=v ...]``

Evaluates baselines and trained checkpoints on a preprocessed dataset under the
``next_item`` protocol (session models) or ``protocol: sampled_candidates`` (history models
and their baselines, seed 002 section 5: held-out users' targets among sampled negatives,
``sampled.gammas`` x ``sampled.n_negatives``) and prints one table (every row records its
protocol).
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


class SampledSection(StrictModel):
    """``protocol: sampled_candidates`` (seed 002 section 5.3): every (gamma, n) of the grid
    draws its candidates once (``seed``) and every model ranks the same ones."""

    gammas: list[float] = Field(default_factory=lambda: [0.75, 1.0])
    n_negatives: list[int] = Field(default_factory=lambda: [100])
    seed: int = 0
    max_history: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _grid(self) -> SampledSection:
        if not self.gammas or any(g < 0 for g in self.gammas):
            raise ValueError(f"sampled.gammas must be a non-empty list of values >= 0, got {self.gammas}")
        if not self.n_negatives or any(n < 1 for n in self.n_negatives):
            raise ValueError(f"sampled.n_negatives must be a non-empty list of positive counts, got {self.n_negatives}")
        return self


class EvaluateJobConfig(StrictModel):
    data: DataSection = Field(default_factory=DataSection)
    """``path``, ``train_split`` (baselines are fitted on it) and ``test_split``."""
    protocol: str = "next_item"
    baselines: list[str] = Field(default_factory=lambda: ["pop", "spop", "item_knn"])
    baseline_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    checkpoints: dict[str, str] = Field(default_factory=dict)
    """label -> checkpoint directory of a trained session model, or its run directory (the
    run's latest checkpoint is evaluated)."""
    eval: EvalSection = Field(default_factory=EvalSection)
    output: str | None = None
    """Write the results as JSON here too."""
    sampled: SampledSection = Field(default_factory=SampledSection)
    """``protocol: sampled_candidates``: the (gamma, n) grid and the seed."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in (("cutoffs", "eval.ks"), ("batch_size", "eval.batch_size")):
                if old in data:
                    raise ValueError(f"{old} was renamed: use {new}")
            if data.get("protocol") == "sampled_candidates" and "baselines" not in data:
                data = {**data, "baselines": ["popularity", "last_item"]}
        return data


def resolve_checkpoint(path: str, key: str) -> str:
    """A checkpoint directory as given, or a run directory (``runs/<name>``): its latest
    complete checkpoint; anything else is an error naming the key."""
    from rayrec.platform.checkpoint import CheckpointError
    from rayrec.platform.training.trainer import checkpoint_or_latest

    if not Path(path).is_dir():
        return str(path)  # a missing path: load_checkpoint names what is missing
    last = checkpoint_or_latest(str(path))
    if last is None:
        raise CheckpointError(f"{key}: {path} is neither a checkpoint directory (model.pt, config.json, "
                              "items.json) nor a run directory holding a complete checkpoint_*")
    return last


def run(cfg: EvaluateJobConfig, log=print) -> dict[str, dict[str, Any]]:
    from rayrec.platform import data
    from rayrec.platform.evaluation.protocols import evaluate_next_item
    from rayrec.platform.evaluation.runner import evaluate_baselines, scorer_from_checkpoint

    if cfg.protocol == "sampled_candidates":
        return run_sampled(cfg, log)
    if cfg.protocol != "next_item":
        raise ValueError(f"protocol: 'next_item' or 'sampled_candidates', got {cfg.protocol!r}")
    root = cfg.data.path
    scorers = {}
    if cfg.checkpoints:  # every checkpoint loads (and matches the data) before any baseline runs
        item_ids = data.load_items(root)["item_id"].astype(str).tolist()
        for label, path in cfg.checkpoints.items():
            ck_dir = resolve_checkpoint(path, f"checkpoints.{label}")
            if ck_dir != str(path):
                log(f"  {label}: {path} is a run directory; evaluating its latest checkpoint {ck_dir}")
            scorers[label] = (ck_dir, scorer_from_checkpoint(ck_dir, item_ids)[0])
    results = evaluate_baselines(
        root, cfg.data.train_split, cfg.data.test_split, cfg.baselines, cfg.eval.ks, cfg.baseline_params, log=log
    )
    if scorers:
        test = data.session_arrays(root, cfg.data.test_split)
        for label, (path, scorer) in scorers.items():
            res = evaluate_next_item(scorer, test.offsets, test.items, tuple(cfg.eval.ks), cfg.eval.batch_size)
            res["checkpoint"] = str(path)
            results[label] = res
            log(f"  {label:<10} recall@20={res.get('recall@20', float('nan')):.4f} mrr@20={res.get('mrr@20', float('nan')):.4f}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    from rayrec.platform.checkpoint import CheckpointError
    from rayrec.platform.data import DataError
    from rayrec.platform.evaluation.runner import format_table

    args = _cli.parser("evaluate", __doc__, EvaluateJobConfig).parse_args(_cli.argv_or_sys(argv))
    cfg = _cli.load(EvaluateJobConfig, args, "evaluate")
    try:
        results = run(cfg)
    except (DataError, CheckpointError, ValueError, KeyError) as exc:
        print(f"rayrec.jobs.evaluate: error: {exc}", file=sys.stderr)
        return 1
    print(format_sampled_table(results, cfg.eval.ks) if cfg.protocol == "sampled_candidates"
          else format_table(results, cfg.eval.ks[-3:]))
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(
            json.dumps({"config": cfg.model_dump(mode="json"), "results": results}, indent=1, default=str)
        )
    return 0


def run_sampled(cfg: EvaluateJobConfig, log=print) -> dict[str, dict[str, Any]]:
    """``protocol: sampled_candidates``: ``data.test_split``'s ``<split>_input`` histories and
    ``<split>_target`` positives; popularity from ``data.train_split``'s distinct users;
    history baselines (popularity, last_item, weighted_sum) and history-model checkpoints.
    Rows are ``<label> g=<gamma> n=<n>``."""
    from rayrec.models import baselines as bl
    from rayrec.models.attention_cf import score_candidates
    from rayrec.platform import data
    from rayrec.platform.checkpoint import load_model
    from rayrec.platform.embeddings import load_embeddings
    from rayrec.platform.evaluation.protocols import (
        draw_candidates,
        evaluate_candidate_set,
        history_cases,
    )
    from rayrec.platform.training.families import distinct_user_counts, user_sequences

    root, s = cfg.data.path, cfg.sampled
    unknown = [b for b in cfg.baselines if b not in bl.HISTORY_BASELINES]
    if unknown:
        raise ValueError(f"baselines: {unknown} are not history baselines ({', '.join(bl.HISTORY_BASELINES)})")
    item_ids = data.load_items(root)["item_id"].astype(str).tolist()
    emb = load_embeddings(cfg.data.embeddings, root) if cfg.data.embeddings else None
    if emb is None and ({"last_item", "weighted_sum"} & set(cfg.baselines)):
        raise ValueError("data.embeddings: last_item / weighted_sum need a published embedding version")
    models = {}
    for label, path in cfg.checkpoints.items():
        ck_dir = resolve_checkpoint(path, f"checkpoints.{label}")
        models[label] = (ck_dir, load_model(ck_dir, expected_item_ids=item_ids, kind="history").model)
    train, _ = user_sequences(root, [cfg.data.train_split])
    pop = distinct_user_counts(train, len(item_ids))
    inp, users = user_sequences(root, [f"{cfg.data.test_split}_input"])
    tgt, t_users = user_sequences(root, [f"{cfg.data.test_split}_target"])
    if users != t_users:
        raise ValueError(f"data.test_split {cfg.data.test_split!r}: _input and _target hold different users")
    known = emb.pair_counts > 0 if emb is not None else None  # targets without a vector: out for all
    cases = history_cases(inp.offsets, inp.items, tgt.offsets, tgt.items, s.max_history, known, users)
    log(f"sampled_candidates: {cases.counts}")
    scorers: dict[str, Any] = {}
    for b in cfg.baselines:
        scorers[b] = (bl.popularity_scores(pop) if b == "popularity" else
                      bl.last_item_scores(emb.x) if b == "last_item" else bl.weighted_sum_scores(emb.x))
    for label, (_, model) in models.items():
        scorers[label] = (lambda m: (lambda h, c: score_candidates(m, h, c, cfg.eval.batch_size)))(model)
    results: dict[str, dict[str, Any]] = {}
    for gamma in s.gammas:
        for n in s.n_negatives:
            cs = draw_candidates(cases, pop, gamma, n, s.seed)
            for label, fn in scorers.items():
                res = evaluate_candidate_set(fn, cs, cfg.eval.ks)
                res["model"] = label
                if label in models:
                    res["checkpoint"] = models[label][0]
                results[f"{label} g={gamma:g} n={n}"] = res
                log(f"  {label:<14} gamma={gamma:<5g} n={n:<4} ndcg={res['ndcg']:.4f} "
                    + " ".join(f"recall@{k}={res[f'recall@{k}']:.4f}" for k in cfg.eval.ks))
    return results


def format_sampled_table(results: dict[str, dict[str, Any]], ks: Sequence[int]) -> str:
    keys = ["ndcg", *[f"recall@{k}" for k in ks]]
    head = f"{'model':<28}" + "".join(f"{k:>11}" for k in keys) + f"{'n':>7}"
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        lines.append(f"{name:<28}" + "".join(f"{res.get(k, float('nan')):>11.4f}" for k in keys)
                     + f"{res.get('n', 0):>7}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

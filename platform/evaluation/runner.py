"""Evaluate baselines and trained session models under the ``next_item`` protocol."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from rayrec.models import registry
from rayrec.platform import data
from rayrec.platform.evaluation.protocols import evaluate_next_item

DEFAULT_BASELINES = ("pop", "spop", "item_knn", "bpr_mf")


def fit_baseline(name: str, train, n_items: int, params: dict[str, Any] | None = None):
    entry = registry.get(name)
    if entry.kind != "baseline":
        raise ValueError(f"{name!r} is not a baseline (kind {entry.kind})")
    cfg = entry.config_cls(**(params or {}))
    return entry.build(cfg, train.offsets, train.items, n_items, train.ts)


def scorer_from_checkpoint(path: str, expected_item_ids: list[str] | None = None):
    """Load a session-model checkpoint (weights_only) and return ``(scorer, checkpoint)``: the
    registered model's ``SessionScorer`` (``ModelSpec.scorer``) over the rebuilt model."""
    from rayrec.platform.checkpoint import load_model

    loaded = load_model(path, expected_item_ids, kind="session")
    return loaded.scorer(), loaded.checkpoint


def evaluate_baselines(
    root: str,
    train_split: str,
    test_split: str,
    names: Sequence[str] = DEFAULT_BASELINES,
    cutoffs: Sequence[int] = (5, 10, 20),
    params: dict[str, dict[str, Any]] | None = None,
    log=print,
) -> dict[str, dict[str, Any]]:
    n_items = len(data.load_items(root))
    train = data.session_arrays(root, train_split)
    test = data.session_arrays(root, test_split)
    out = {}
    torch.manual_seed(0)
    for name in names:
        t = time.perf_counter()
        scorer = fit_baseline(name, train, n_items, (params or {}).get(name))
        res = evaluate_next_item(scorer, test.offsets, test.items, cutoffs=tuple(cutoffs))
        res["seconds"] = round(time.perf_counter() - t, 2)
        out[name] = res
        log(f"  {name:<10} recall@20={res.get('recall@20', float('nan')):.4f} "
            f"mrr@20={res.get('mrr@20', float('nan')):.4f} ({res['seconds']}s)")
    return out


def format_table(results: dict[str, dict[str, Any]], cutoffs: Sequence[int] = (5, 10, 20)) -> str:
    keys = [f"{m}@{k}" for k in cutoffs for m in ("recall", "mrr")]
    head = f"{'model':<22}" + "".join(f"{k:>11}" for k in keys) + f"{'protocol':>11}{'n':>8}"
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        row = f"{name:<22}" + "".join(f"{res.get(k, float('nan')):>11.4f}" for k in keys)
        lines.append(row + f"{res.get('protocol', ''):>11}{res.get('n', 0):>8}")
    return "\n".join(lines)

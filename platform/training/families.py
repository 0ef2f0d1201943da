"""Data families: how the platform loads, checks, shards and evaluates the training data of a
model kind (``ModelSpec.kind``), so the one loop never branches on a model.

* ``session`` (GRU4Rec and every next-item model): the preprocess output's session splits as
  CSR :class:`rayrec.models.session_parallel.SessionArrays`; data-parallel shards are whole
  sessions (a Ray Data dataset of one row per session); evaluation is the ``next_item``
  protocol (seed 003 section 4: full ranking, conservative ties).
* ``daily`` (the seed 000 model): the date-window splits as user windows over a catalog
  clipped to P products; every worker loads all of it (tensor parallelism splits the model,
  not the data); evaluation is the ``future_window`` protocol (Precision@K, PCC@K).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayrec.models.session_parallel import SessionArrays, item_counts, n_training_pairs
from rayrec.platform import data as pdata

__all__ = ["FAMILIES", "TrainData", "TrainingInputError", "family_of"]


class TrainingInputError(ValueError):
    """The data cannot be trained on (empty split, no pair, item index mismatch)."""


@dataclass
class TrainData:
    train: Any
    valid: Any | None
    item_ids: list[str]
    counts: np.ndarray
    """Global training item counts (N,) int64."""


class SessionFamily:
    kind = "session"

    @staticmethod
    def load(job: Any, with_valid: bool = True) -> TrainData:
        d = job.data
        if d.synthetic is not None or d.catalog_size is not None:
            bad = "data.synthetic" if d.synthetic is not None else "data.catalog_size"
            raise TrainingInputError(f"{bad}: not supported by session models (model {job.model.name})")
        items = pdata.load_items(d.path)
        item_ids = items["item_id"].astype(str).tolist()
        train = pdata.session_arrays(d.path, d.train_split)
        if n_training_pairs(train) == 0:
            raise TrainingInputError(
                f"data.train_split {d.train_split!r} has {train.n_events} event(s) in "
                f"{train.n_sessions} session(s) and no session with 2 or more events: nothing to train on"
            )
        bad = np.flatnonzero((train.items < 0) | (train.items >= len(item_ids)))
        if bad.size:  # never reaches a step: item tables have exactly len(item_ids) rows
            e = int(bad[0])
            s = int(np.searchsorted(train.offsets, e, side="right") - 1)
            raise TrainingInputError(
                f"data.train_split {d.train_split!r}: event {e} (session {s}) has item_idx "
                f"{int(train.items[e])}, outside items.parquet's {len(item_ids)} items "
                f"(0..{len(item_ids) - 1}); {bad.size} event(s) in all: re-run preprocess"
            )
        valid = SessionFamily.load_valid(job) if with_valid else None
        return TrainData(train, valid, item_ids, item_counts(train, len(item_ids)))

    @staticmethod
    def load_valid(job: Any) -> SessionArrays | None:
        """The validation split alone (a data-parallel rank 0 has its training shard already)."""
        return pdata.session_arrays(job.data.path, job.data.valid_split) if job.data.valid_split else None

    @staticmethod
    def metric_names(ks: Sequence[int]) -> list[str]:
        return [f"{m}@{k}" for m in ("recall", "mrr", "ndcg", "hit") for k in ks] + ["n", "n_sessions"]

    @staticmethod
    def evaluate(scorer: Any, valid: SessionArrays, ks: Sequence[int], batch_size: int) -> dict[str, Any]:
        from rayrec.platform.evaluation.protocols import evaluate_next_item

        return evaluate_next_item(scorer, valid.offsets, valid.items, tuple(ks), batch_size)

    @staticmethod
    def to_rows(train: SessionArrays) -> list[dict[str, Any]]:
        """One row per session (a Ray Data dataset of whole sessions)."""
        rows = []
        ts = train.ts
        for s in range(train.n_sessions):
            a, b = int(train.offsets[s]), int(train.offsets[s + 1])
            rows.append({
                "start": float(ts[a]) if ts is not None else float(s),
                "order": s,
                "items": train.items[a:b].tolist(),
                "ts": ts[a:b].tolist() if ts is not None else [0.0] * (b - a),
            })
        return rows

    @staticmethod
    def from_rows(df: Any) -> SessionArrays:
        """Inverse of :meth:`to_rows` for a worker's shard (sorted by start, order)."""
        if len(df) == 0:
            return SessionArrays(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))
        df = df.sort_values(["start", "order"], kind="stable")
        lens = np.array([len(x) for x in df["items"]], dtype=np.int64)
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        items = np.concatenate([np.asarray(x, dtype=np.int64) for x in df["items"]])
        ts = np.concatenate([np.asarray(x, dtype=np.float64) for x in df["ts"]])
        return SessionArrays(offsets, items, ts)


class DailyFamily:
    kind = "daily"

    @staticmethod
    def load(job: Any, with_valid: bool = True) -> TrainData:
        from rayrec.platform.daily.data import (
            Catalog,
            load_catalog,
            load_windows,
            synthetic_windows,
        )

        d = job.data
        if d.synthetic is not None:
            w = synthetic_windows(d.synthetic)
            cat = Catalog([str(i) for i in range(d.synthetic.n_items)], np.arange(d.synthetic.n_items))
            return TrainData(w, None, cat.item_ids, _window_counts(w, cat.size))
        cat = load_catalog(d.path, d.catalog_size)
        train = load_windows(d.path, d.train_split, cat)
        valid = load_windows(d.path, d.valid_split, cat) if (with_valid and d.valid_split) else None
        return TrainData(train, valid, list(cat.item_ids), _window_counts(train, cat.size))

    @staticmethod
    def metric_names(ks: Sequence[int]) -> list[str]:
        return [f"{m}@{k}" for m in ("precision", "pcc", "coverage") for k in ks] + ["n_users"]

    @staticmethod
    def evaluate(model: Any, windows: Any, ks: Sequence[int], batch_size: int) -> dict[str, Any]:
        """``future_window`` (seed 000 eqs. 1-2): input items excluded, Precision@K, PCC@K.

        An unsharded model takes the fused top-K (``rayrec.ops_kernels.topk_scores``, no
        ``(B, P)`` block); a tensor-parallel slice gathers its ranges' scores (every rank calls)."""
        import torch

        from rayrec.platform.evaluation.protocols import (
            evaluate_future_window,
            evaluate_future_window_topk,
        )

        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                if not model.is_sharded:
                    return evaluate_future_window_topk(
                        lambda users: model(windows.batch(users)[0]), model.output_layer.weight,
                        model.output_layer.bias, windows.x_lists(), windows.y_lists(), list(ks), batch_size)
                return evaluate_future_window(
                    lambda users: model.score(model(windows.batch(users)[0])), windows.x_lists(),
                    windows.y_lists(), list(ks), windows.n_items, batch_size)
        finally:
            model.train(was)


def _window_counts(windows: Any, n_items: int) -> np.ndarray:
    return np.bincount(np.asarray(windows.x_items, dtype=np.int64), minlength=n_items).astype(np.int64)


FAMILIES: dict[str, Any] = {"session": SessionFamily, "daily": DailyFamily}


def family_of(spec: Any) -> Any:
    try:
        return FAMILIES[spec.kind]
    except KeyError:
        raise TrainingInputError(f"model {spec.name!r}: no training data family for kind {spec.kind!r}") from None

"""Daily batch predictions into the recommendation store (seed 000, section 5, Figure 9).

Every day the model pre-computes each customer's top-K products from the purchase history
up to the as-of date; the online service only reads them.  :func:`batch_predict`:

1. builds one row per user (``user_id``, input products, their ages in days relative to
   the as-of date) from a ``date_windows`` split;
2. scores them with Ray Data ``map_batches`` and the class UDF :class:`TopKScorer`
   (``concurrency`` actors, the checkpoint loaded once per actor in ``__init__``), or in
   this process when ``ray.use_ray`` is false;
3. returns rows ``(user_id, item ids, probabilities)``, best first, with the user's
   already-consumed products excluded (section 5: previous purchases are not recommended);
   scoring, exclusion and top-K are one fused ``rayrec.ops_kernels.topk_scores`` call
   (``RAYREC_KERNELS`` picks the backend), so no ``(B, P)`` block is built.

:func:`publish_predictions` writes them as one complete version of a
:class:`~rayrec.platform.store.RecommendationStore` tagged with the model version and the
as-of date.  Everything is scored and materialised before the publish starts, so a
failure while predicting publishes nothing; re-publishing the same (as-of, model version)
returns the existing version (idempotent).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rayrec.models.daily_nn import DailyNN, SparseBatch
from rayrec.ops_kernels import topk_scores
from rayrec.platform.daily.config import PredictConfig
from rayrec.platform.daily.data import UserWindows
from rayrec.platform.store import RecommendationStore, Row

__all__ = [
    "TopKScorer",
    "batch_predict",
    "output_table",
    "model_version_of",
    "publish_predictions",
    "user_rows",
]


def model_version_of(ck_dir: str | Path) -> str:
    """A stable id of a checkpoint: sha256 of its weights file (12 hex digits)."""
    h = hashlib.sha256()
    with open(Path(ck_dir) / "model.pt", "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def user_rows(windows: UserWindows) -> pd.DataFrame:
    """One row per user: ``user_id``, ``items`` (int64 list), ``days`` (float32 list)."""
    x_items = [a.astype(np.int64) for a in windows.x_lists()]
    x_days = [windows.x_days[a:b] for a, b in zip(windows.x_offsets[:-1], windows.x_offsets[1:])]
    return pd.DataFrame({"user_id": windows.user_ids.astype(str), "items": x_items, "days": x_days})


def _to_sparse(items: Any, days: Any) -> SparseBatch:
    items = [np.asarray(x, dtype=np.int64) for x in items]
    days = [np.asarray(d, dtype=np.float32) for d in days]
    lens = np.array([x.size for x in items], dtype=np.int64)
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    flat = np.concatenate(items) if items else np.zeros(0, np.int64)
    fdays = np.concatenate(days) if days else np.zeros(0, np.float32)
    return SparseBatch(torch.from_numpy(flat), torch.from_numpy(offsets), torch.from_numpy(fdays))


def _exclusions(inputs: SparseBatch) -> torch.Tensor:
    """Each row's input products as a ``(B, E)`` long tensor padded with -1."""
    lens = inputs.offsets[1:] - inputs.offsets[:-1]  # (B,)
    width = int(lens.max()) if lens.numel() else 0
    out = torch.full((inputs.batch_size, width), -1, dtype=torch.long)
    if inputs.nnz:
        rows = inputs.row_ids()  # (nnz,)
        col = torch.arange(inputs.nnz) - inputs.offsets[rows]
        out[rows, col] = inputs.item_idx
    return out


def output_table(model: DailyNN) -> tuple[torch.Tensor, torch.Tensor]:
    """The output layer of a whole-catalog daily model as ``(weight (P, H2), bias (P,))``."""
    if model.is_sharded:
        raise ValueError("batch prediction needs the whole-catalog model (load_daily_model)")
    return model.output_layer.weight, model.output_layer.bias


class TopKScorer:
    """Ray Data class UDF: loads the checkpoint once, scores batches of user rows."""

    def __init__(self, checkpoint: str, k: int, torch_threads: int | None = 1) -> None:
        from rayrec.platform.daily.trainer import load_daily_model

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model, item_ids, _ = load_daily_model(checkpoint)
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.k = int(k)
        self.loads = 1
        w, b = output_table(self.model)
        self.out_weight, self.out_bias = w.detach().contiguous(), b.detach()  # (P, H2), (P,)

    @torch.no_grad()
    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        inputs = _to_sparse(batch["items"], batch["days"])
        hidden = self.model(inputs)  # (B, H2)
        weight, bias = self.out_weight, self.out_bias  # (P, H2), (P,)
        k = min(self.k, weight.shape[0])
        # eq. 3's Y_hat = Sigm(W_L A + B_L) is monotone in the logit: the top-K of the logits
        # with the consumed products excluded, fused (never the (B, P) block), then Sigm
        logits, idx = topk_scores(hidden, weight, k, bias, exclude=_exclusions(inputs))  # (B, k)
        probs = torch.sigmoid(logits)
        rec_items, rec_scores = [], []
        for v, i in zip(probs.numpy(), idx.numpy()):
            ok = i >= 0  # -1: fewer than k products left after the exclusions
            rec_items.append([str(x) for x in self.item_ids[i[ok]]])
            rec_scores.append([float(x) for x in v[ok]])
        return pd.DataFrame({"user_id": batch["user_id"].astype(str).to_numpy(),
                             "rec_items": rec_items, "rec_scores": rec_scores})


def batch_predict(checkpoint: str, windows: UserWindows, cfg: PredictConfig, use_ray: bool = True) -> list[Row]:
    """Top-K rows for every user of ``windows`` (Ray Data actors with ``use_ray``, else this
    process: the job's ``ray.use_ray``)."""
    df = user_rows(windows)
    if df.empty:
        return []
    if not use_ray:
        scorer = TopKScorer(checkpoint, cfg.k, torch_threads=None)
        out = [scorer(df.iloc[a : a + cfg.batch_size]) for a in range(0, len(df), cfg.batch_size)]
        res = pd.concat(out, ignore_index=True)
    else:
        import ray

        ds = ray.data.from_pandas(df).repartition(max(cfg.concurrency * 2, 1))
        ds = ds.map_batches(
            TopKScorer,
            fn_constructor_kwargs={"checkpoint": str(checkpoint), "k": cfg.k},
            batch_size=cfg.batch_size,
            batch_format="pandas",
            concurrency=cfg.concurrency,
            num_cpus=cfg.num_cpus_per_actor,
        )
        res = ds.to_pandas()  # fully materialised before any publish
    return [(u, list(i), list(s)) for u, i, s in zip(res["user_id"], res["rec_items"], res["rec_scores"])]


def _rows_iter(rows: list[Row]) -> Iterator[Row]:
    yield from rows


def publish_predictions(
    store: RecommendationStore, rows: list[Row], as_of: str, model_version: str,
    make_current: bool = True,
) -> str:
    """Publish ``rows`` as version ``<as_of>-<model_version>``; returns the version now
    holding ``(as_of, model_version)`` (the existing one when re-run).  ``make_current=False``:
    a backfill, stored without moving ``current``."""
    return store.publish(f"{as_of}-{model_version}", as_of, model_version, _rows_iter(rows),
                         make_current=make_current)

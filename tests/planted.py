"""A planted-cluster interaction log for the seed 002 models (no external data).

``n_clusters`` clusters of ``items_per_cluster`` items; every user belongs to one cluster and
interacts with items of it only, drawn with a Zipf-like popularity inside the cluster (so
global popularity is a real but weak baseline), in time order.  An item's true neighbours are
the items of its cluster; a user's future items are in the cluster of its history.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rayrec.platform.config import load_config
from rayrec.platform.preprocessing.config import PreprocessJobConfig
from rayrec.platform.preprocessing.pipeline import run_preprocess


def planted_events(n_users: int = 400, n_clusters: int = 5, items_per_cluster: int = 20,
                   events: tuple[int, int] = (12, 24), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, items_per_cluster + 1) ** 0.8
    w /= w.sum()
    rows = []
    t0 = 1_704_067_200  # 2024-01-01 UTC, unix seconds
    for u in range(n_users):
        c = int(rng.integers(n_clusters))
        n = int(rng.integers(events[0], events[1] + 1))
        items = c * items_per_cluster + rng.choice(items_per_cluster, size=n, p=w)
        for k, i in enumerate(items):
            rows.append((f"u{u}", f"i{int(i)}", t0 + 60 * (u * 1000 + 3 * k)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])


def cluster_of(item_id: str, items_per_cluster: int = 20) -> int:
    return int(item_id[1:]) // items_per_cluster


def planted_dataset(root: Path, seed: int = 0, **kw) -> str:
    """Preprocess the planted log into ``root/data`` (``user_holdout``: 20% test users, 10%
    validation users, their last 5 events the targets)."""
    root.mkdir(parents=True, exist_ok=True)
    src = root / "events.csv"
    df = planted_events(seed=seed, **kw)
    df.to_csv(src, index=False)
    cfg = load_config(
        PreprocessJobConfig, None,
        ["source.format=csv", f"source.path={src}",
         "source.column_map={user_id: user_id, item_id: item_id, ts: ts}",
         "split.name=user_holdout", "split.holdout_test_fraction=0.2", "split.valid_fraction=0.1",
         "split.n_targets=5", "filter.min_session_length=1", "filter.min_item_support=1",
         f"output.path={root / 'data'}", "ray.use_ray=false"],
    )
    run_preprocess(cfg, log=lambda _m: None)
    return str(root / "data")


def train_item2vec(root: Path, data: str, epochs: int = 8, *extra: str):
    """item2vec on ``data`` in this process, published under ``root/runs/i2v``; returns
    (fit result, run directory, version)."""
    from rayrec.platform.embeddings import publish_checkpoint
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.trainer import fit

    job = load_config(TrainJobConfig, None, [
        "model.name=item2vec", "model.dim=16", f"data.path={data}", "ray.use_ray=false",
        f"train.epochs={epochs}", "train.batch_size=256", "optim.lr=0.02", "model.subsample=0",
        f"run.storage_path={root / 'runs'}", "run.name=i2v", *extra])
    res = fit(job, log=lambda _m: None)
    version = publish_checkpoint(job, res.checkpoint_dir, res.run_dir)
    return res, res.run_dir, version


def neighbour_purity(x: np.ndarray, item_ids: list[str], k: int = 10, items_per_cluster: int = 20) -> float:
    """Mean share of each item's top-k cosine neighbours (itself excluded) in its cluster."""
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    top = np.argsort(-sim, axis=1)[:, :k]
    cl = np.array([cluster_of(i, items_per_cluster) for i in item_ids])
    return float((cl[top] == cl[:, None]).mean())

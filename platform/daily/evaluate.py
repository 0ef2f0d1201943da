"""Evaluation of the daily model: baselines, the seed's comparison table, the decay plot.

Seed 000 section 4 compares the predictor (hard split), the equally-weighted (EW) and the
soft-split networks, with and without time decay, by Precision@K (eq. 1) and PCC@K
(eq. 2, the share of the catalog reached by correct recommendations), with the
``future_window`` protocol (input items excluded).  Baselines, adapted to this protocol:

* POP: products ranked by their purchase count in the evaluated users' input windows;
* Item-KNN (user-based aggregation over item similarities): ``score(u, j) = sum_{i in X_u}
  cos(i, j)``, the cosine between products' customer vectors in the input windows.

:func:`plot_decay` draws the learned convolutional decay (eq. 4) against the least-squares
fit of the parametric decay (eq. 5), like the paper's Figure 4.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayrec.models.daily_nn import DECAY_BUCKETS, DECAY_HORIZON_DAYS, fit_parametric_decay
from rayrec.platform.daily.data import UserWindows, load_catalog, load_windows
from rayrec.platform.evaluation.protocols import evaluate_future_window
from rayrec.platform.training.config import TrainJobConfig

__all__ = [
    "COMPARISON_ROWS",
    "compare_ml100k",
    "evaluate_scores",
    "item_knn_scores",
    "plot_decay",
    "pop_scores",
    "table_markdown",
]

#: (row label, model overrides) of the comparison: variants x input decay (none / eq. 5 / eq. 4).
COMPARISON_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("predictor, no decay", {"variant": "predictor", "decay": "none"}),
    ("predictor, parametric decay (ti=40)", {"variant": "predictor", "decay": "parametric", "ti": 40.0}),
    ("predictor, learned decay", {"variant": "predictor", "decay": "learned"}),
    ("EW, no decay", {"variant": "ew", "decay": "none"}),
    ("EW, learned decay", {"variant": "ew", "decay": "learned"}),
    ("soft split, no input decay (to=4)", {"variant": "soft_split", "decay": "none"}),
    ("soft split (ti=40, to=4)", {"variant": "soft_split", "decay": "parametric"}),
    ("soft split, learned decay (to=4)", {"variant": "soft_split", "decay": "learned"}),
]


def evaluate_scores(
    score_fn: Callable[[np.ndarray], np.ndarray | torch.Tensor], windows: UserWindows, ks: Sequence[int]
) -> dict[str, Any]:
    return evaluate_future_window(score_fn, windows.x_lists(), windows.y_lists(), ks, windows.n_items)


def pop_scores(windows: UserWindows) -> Callable[[np.ndarray], np.ndarray]:
    """POP over the input windows' purchase counts (ties: lower index first)."""
    counts = np.bincount(windows.x_items, minlength=windows.n_items).astype(np.float64)

    def fn(users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(counts, (len(users), counts.size))

    return fn


def item_knn_scores(windows: UserWindows) -> Callable[[np.ndarray], np.ndarray]:
    """Item-KNN: cosine similarity of products over customers' input windows, summed over
    each customer's input products (all neighbours; the catalog is small here)."""
    P, U = windows.n_items, windows.n_users
    rows = np.repeat(np.arange(U), np.diff(windows.x_offsets))
    m = torch.zeros(U, P, dtype=torch.float64)
    m[torch.from_numpy(rows), torch.from_numpy(windows.x_items)] = 1.0  # (U, P) small here
    co = m.T @ m  # (P, P)
    norm = torch.sqrt(torch.diag(co)).clamp(min=1e-12)
    sim = co / norm[:, None] / norm[None, :]
    sim.fill_diagonal_(0.0)
    pop = m.sum(0) * 1e-9  # tie-break by popularity

    def fn(users: np.ndarray) -> torch.Tensor:
        return m[torch.from_numpy(users)] @ sim + pop

    return fn


def observed_buckets(windows: UserWindows) -> np.ndarray:
    """Indices of the eq. 4 date buckets that hold at least one training purchase."""
    from rayrec.models.daily_nn import decay_bucket

    return np.unique(decay_bucket(torch.from_numpy(windows.x_days)).numpy())


def _fit_observed(curve: np.ndarray, centres: np.ndarray, obs: np.ndarray) -> tuple[float, float]:
    """Least-squares ``s * Td(t, decay)`` on the observed buckets only (log grid + refine)."""
    y, t = curve[obs], centres[obs]
    best = (np.inf, 1.0, 1.0)
    grid = np.exp(np.linspace(np.log(0.1), np.log(1e5), 2000))
    for d in grid:
        f = 1.0 / (1.0 + t / d)
        s = float(f @ y / (f @ f))
        e = float(((s * f - y) ** 2).sum())
        if e < best[0]:
            best = (e, float(d), s)
    return best[1], best[2]


def plot_decay(
    curve: Sequence[float], path: str | Path, title: str = "", observed: Sequence[int] | None = None
) -> dict[str, Any]:
    """PNG of the learned eq. 4 decay vs the fitted eq. 5 curve (Figure 4); returns the fit.

    ``observed``: the buckets that held training purchases (others never receive a gradient
    and keep their initial weight 1); the fit then uses those buckets only, and the plot
    marks the untrained ones.  None fits all 32 (``fit_parametric_decay``).

    A fit beyond the observed horizon (the oldest observed bucket's end: a nearly flat
    learned curve, e.g. a handful of users) is no decay at all: ``decay_days`` is then None
    and ``note`` says why, instead of a "decay of 15,689 days"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = np.asarray(curve, dtype=np.float64)
    width = DECAY_HORIZON_DAYS / DECAY_BUCKETS
    centres = (np.arange(DECAY_BUCKETS) + 0.5) * width
    if observed is None:
        obs = np.arange(DECAY_BUCKETS)
        decay, scale = fit_parametric_decay(curve, return_scale=True)
    else:
        obs = np.asarray(sorted(int(i) for i in observed), dtype=np.int64)
        decay, scale = _fit_observed(curve, centres, obs)
    horizon = float(centres[obs].max() + width / 2) if obs.size else DECAY_HORIZON_DAYS
    flat = not decay <= horizon
    t = np.linspace(0, horizon, 400)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(centres[obs], curve[obs], "o-", label="learned convolutional decay (eq. 4)")
    rest = np.setdiff1d(np.arange(DECAY_BUCKETS), obs)
    if rest.size:
        ax.plot(centres[rest], curve[rest], "x", color="grey", label="buckets without data (untrained)")
    fit_label = (f"parametric fit (eq. 5): flat, no decay within {horizon:.0f} d" if flat
                 else f"parametric fit (eq. 5): decay={decay:.1f} d")
    ax.plot(t, scale / (1 + t / decay), "--", label=fit_label)
    ax.set_xlabel("days before the input window end")
    ax.set_ylabel("input weight")
    ax.set_title(title or "Time decay: learned vs parametric")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    out: dict[str, Any] = {"decay_days": None if flat else float(decay), "scale": float(scale),
                           "observed_buckets": [int(i) for i in obs], "horizon_days": horizon}
    if flat:
        out["note"] = (f"no time decay learned within the observed {horizon:.0f} days (the least-squares "
                       f"fit, {decay:.0f} d, lies beyond the data; often too few users or purchases)")
    return out


def table_markdown(rows: list[dict[str, Any]], ks: Sequence[int]) -> str:
    """One row per model: P@K, PCC@K and the number of evaluated users (``n_users``)."""
    head = ("| model | " + " | ".join(f"P@{k}" for k in ks) + " | " + " | ".join(f"PCC@{k}" for k in ks)
            + " | n_users |")
    sep = "|" + "---|" * (2 + 2 * len(ks))
    lines = [head, sep]
    for r in rows:
        p = " | ".join(f"{r[f'precision@{k}']:.4f}" for k in ks)
        c = " | ".join(f"{r[f'pcc@{k}']:.4f}" for k in ks)
        lines.append(f"| {r['model']} | {p} | {c} | {r.get('n_users', '')} |")
    return "\n".join(lines)


def compare_ml100k(
    base: TrainJobConfig,
    out_dir: str | Path,
    seeds: Sequence[int] = (0,),
    rows: Sequence[tuple[str, dict[str, Any]]] = COMPARISON_ROWS,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train every comparison row in-process on ``base.data.path`` and evaluate it on the
    test windows (``base.data.test_split``); POP and Item-KNN rows are added.  Metrics are
    averaged over ``seeds``.  Writes ``comparison.md``, ``comparison.json`` and, for the
    learned-decay rows, ``decay_<row>.png``."""
    from rayrec.platform.daily.trainer import load_daily_model
    from rayrec.platform.training.trainer import fit

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ks = list(base.eval.ks)
    cat = load_catalog(base.data.path, base.data.catalog_size)
    test = load_windows(base.data.path, base.data.test_split, cat)
    observed = observed_buckets(load_windows(base.data.path, base.data.train_split, cat))
    results: list[dict[str, Any]] = []
    for label, fn in (("POP", pop_scores(test)), ("Item-KNN", item_knn_scores(test))):
        m = evaluate_scores(fn, test, ks)
        results.append({"model": label, **{k: v for k, v in m.items() if k != "protocol"}})
        log(f"{label}: {table_markdown(results[-1:], ks).splitlines()[-1]}")
    for label, over in rows:
        per_seed: list[dict[str, Any]] = []
        curves = []
        for seed in seeds:
            model_cfg = base.model.model_copy(update=over)
            model_cfg = type(base.model).model_validate(model_cfg.model_dump())
            slug = label.split(",")[0].replace(" ", "_") + "_" + over["decay"] + f"_s{seed}"
            cfg = base.model_copy(update={
                "model": model_cfg,
                "train": base.train.model_copy(update={"seed": seed}),
                "run": base.run.model_copy(update={"name": f"compare_{slug}", "storage_path": str(out / "runs")}),
            })
            res = fit(cfg, log=lambda _m: None)
            model, _, _ = load_daily_model(res.checkpoint_dir)
            def score(users: np.ndarray, model=model) -> torch.Tensor:
                inputs, _ = test.batch(users)
                with torch.no_grad():
                    return model.score(model(inputs))
            per_seed.append(evaluate_scores(score, test, ks))
            if over["decay"] == "learned":
                curves.append([float(x) for x in model.learned_decay_curve()])
        row: dict[str, Any] = {"model": label, "seeds": list(seeds)}
        for k in per_seed[0]:
            if isinstance(per_seed[0][k], float):
                row[k] = float(np.mean([m[k] for m in per_seed]))
                row[k + "_std"] = float(np.std([m[k] for m in per_seed]))
        row["n_users"] = per_seed[0]["n_users"]
        if curves:
            slug = label.split(",")[0].replace(" ", "_")
            row["decay_fit"] = plot_decay(np.mean(curves, axis=0), out / f"decay_{slug}.png",
                                          title=f"{label}: learned vs parametric decay", observed=observed)
            row["learned_decay"] = list(np.mean(curves, axis=0))
        results.append(row)
        log(f"{label}: {table_markdown([row], ks).splitlines()[-1]}")
    (out / "comparison.json").write_text(json.dumps(results, indent=1))
    md = table_markdown(results, ks)
    (out / "comparison.md").write_text(md + "\n")
    return results

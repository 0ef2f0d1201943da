"""Serve-free core of the recommender app: model loading and batched scoring, filters,
popularity fallback and blending.  The deployments in :mod:`rayrec.serve_apps.recommender`
are thin wrappers around these, so the consistency of served and offline top-K can be tested
without Serve.

* :class:`SessionModel` rebuilds a session's GRU hidden state from its stored events and
  scores all items (seed 003, section 3: the network reads the session's events one by one;
  the next-item scores are ``score(h_T)`` over the whole catalogue, as in evaluation).  The
  scoring, the exclusions and the top-K are one fused ``rayrec.ops_kernels.topk_scores`` call
  (``GRU4Rec.topk``); the ``(B, N)`` score matrix is never built.
* :class:`ItemCatalog` holds the item index and item metadata (category) for the include /
  exclude filters.
* :func:`blend` merges a session list and a daily list (seed 004's point: the session model
  catches the current intent, the collaborative daily model the long-term taste).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rayrec.platform.checkpoint import item_index_hash, load_checkpoint

__all__ = [
    "BlendPolicy",
    "ItemCatalog",
    "ModelNameError",
    "Popularity",
    "ScoreRequest",
    "SessionModel",
    "blend",
    "resolve_model_name",
    "resolve_model_path",
]

BlendPolicy = Literal["interleave", "weighted", "session_first", "daily_first"]
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}$")


class ModelNameError(ValueError):
    """A model name that is malformed or points outside the model directory."""


def resolve_model_path(model_dir: str | os.PathLike[str], name: str) -> Path:
    """``model_dir / name`` if ``name`` is a plain name of a directory inside ``model_dir``.

    Names used for multiplexing and rollouts come from requests and configs: no separators,
    no ``..``, no absolute paths, and the resolved path (symlinks followed) must stay inside
    ``model_dir``.
    """
    if not isinstance(name, str) or not _MODEL_NAME.match(name) or ".." in name:
        raise ModelNameError(
            f"model name must match {_MODEL_NAME.pattern} without '..', got {str(name)[:60]!r}"
        )
    root = Path(model_dir).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ModelNameError(f"model {name!r} resolves outside the model directory")
    if not path.is_dir():
        raise FileNotFoundError(f"model {name!r} not found in the model directory")
    return path


def resolve_model_name(model_dir: str | os.PathLike[str], name: str) -> str:
    """``"latest"`` -> the newest checkpoint directory (by name, then mtime) in ``model_dir``
    that holds a ``model.pt``; any other name is returned unchanged."""
    if name != "latest":
        return name
    root = Path(model_dir)
    cands = [p for p in root.iterdir() if p.is_dir() and (p / "model.pt").is_file()] \
        if root.is_dir() else []
    if not cands:
        raise FileNotFoundError(f"model 'latest': no checkpoint directory in {root}")
    return max(cands, key=lambda p: (p.stat().st_mtime, p.name)).name


class ItemCatalog:
    """The item index (``item_ids[i]`` is item_idx ``i``) plus optional categories."""

    def __init__(self, item_ids: Sequence[str], categories: dict[str, str] | None = None):
        self.item_ids = list(item_ids)
        self.index = {it: i for i, it in enumerate(self.item_ids)}
        self.n = len(self.item_ids)
        self.category_of = dict(categories or {})
        cats = sorted(set(self.category_of.values()))
        self.categories = cats
        code = {c: i for i, c in enumerate(cats)}
        self._cat_codes = np.full(self.n, -1, dtype=np.int64)
        for it, c in self.category_of.items():
            j = self.index.get(it)
            if j is not None:
                self._cat_codes[j] = code[c]
        self._code = code
        self._mask_cache: dict[tuple, torch.Tensor | None] = {}

    @staticmethod
    def read_metadata(path: str | os.PathLike[str] | None) -> dict[str, str]:
        """``item_id -> category`` from a CSV/Parquet file with columns item_id, category."""
        if not path:
            return {}
        import pandas as pd

        p = Path(path)
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, dtype=str)
        missing = {"item_id", "category"} - set(df.columns)
        if missing:
            raise ValueError(f"item metadata {p}: missing column(s) {sorted(missing)}")
        df = df.dropna(subset=["item_id", "category"])
        return dict(zip(df["item_id"].astype(str), df["category"].astype(str)))

    def check_categories(self, names: Iterable[str], field: str) -> None:
        unknown = [c for c in names if c not in self._code]
        if unknown:
            known = ", ".join(self.categories[:20]) or "(no item metadata loaded)"
            raise ValueError(f"{field}: unknown categor(y/ies) {unknown[:5]}; known: {known}")

    def allowed_mask(
        self, include: Sequence[str] = (), exclude: Sequence[str] = ()
    ) -> torch.Tensor | None:
        """Bool (N,) of items allowed by the category filters; None = all allowed."""
        if not include and not exclude:
            return None
        key = (tuple(sorted(include)), tuple(sorted(exclude)))
        if key not in self._mask_cache:
            self.check_categories(include, "include_categories")
            self.check_categories(exclude, "exclude_categories")
            codes = self._cat_codes
            m = np.ones(self.n, dtype=bool)
            if include:
                m &= np.isin(codes, [self._code[c] for c in include])
            if exclude:
                m &= ~np.isin(codes, [self._code[c] for c in exclude])
            if len(self._mask_cache) > 256:
                self._mask_cache.clear()
            self._mask_cache[key] = torch.from_numpy(m)
        return self._mask_cache[key]

    def allowed(self, item_id: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
        c = self.category_of.get(item_id)
        if include and c not in include:
            return False
        return not (exclude and c in exclude)


@dataclass
class ScoreRequest:
    """One scoring request: the session's items (ids, oldest first) and the filters."""

    items: list[str]
    k: int
    exclude: list[str]
    include_categories: list[str]
    exclude_categories: list[str]


@dataclass
class ScoreResult:
    items: list[str]
    scores: list[float]
    source: str  # "session" | "popularity"
    unknown_items: int


class Popularity:
    """Popularity fallback: online counters first (refreshed every ``refresh_s`` from the
    session store), then the training popularity order (item_idx 0 = most popular)."""

    def __init__(self, catalog: ItemCatalog, store=None, refresh_s: float = 5.0, top_n: int = 1000):  # noqa: ANN001
        self.catalog = catalog
        self.store = store
        self.refresh_s = float(refresh_s)
        self.top_n = int(top_n)
        self._order = np.arange(catalog.n, dtype=np.int64)
        self._at = -1e18

    def order(self) -> np.ndarray:
        now = time.monotonic()
        if self.store is not None and now - self._at > self.refresh_s:
            self._at = now
            try:
                online = [self.catalog.index[i] for i, _ in self.store.popular(self.top_n)
                          if i in self.catalog.index]
            except Exception:  # noqa: BLE001 - the store being down must not break fallback
                online = []
            if online:
                head = np.asarray(online, dtype=np.int64)
                rest = np.setdiff1d(np.arange(self.catalog.n), head, assume_unique=False)
                self._order = np.concatenate([head, rest])  # setdiff1d keeps idx order
        return self._order

    def topk(self, k: int, exclude_idx: set[int], allowed: torch.Tensor | None) -> list[int]:
        out: list[int] = []
        for j in self.order():
            j = int(j)
            if j in exclude_idx or (allowed is not None and not bool(allowed[j])):
                continue
            out.append(j)
            if len(out) >= k:
                break
        return out


class SessionModel:
    """A GRU4Rec checkpoint ready to score sessions (weights loaded with weights_only=True)."""

    def __init__(self, ckpt_dir: str | os.PathLike[str], name: str | None = None,
                 categories: dict[str, str] | None = None) -> None:
        from rayrec.models import registry

        ck = load_checkpoint(ckpt_dir)
        mcfg = dict(ck.config.get("model", {}))
        mname = mcfg.get("name")
        if mname != "gru4rec":
            raise ValueError(f"{ckpt_dir}: the session recommender serves gru4rec, got {mname!r}")
        entry = registry.get(mname)
        cfg = entry.config_cls(**mcfg)
        self.model = entry.build(cfg, len(ck.item_ids))
        self.model.load_state_dict(ck.model_state, strict=True)
        self.model.eval()
        self.path = str(ckpt_dir)
        self.name = name or Path(ckpt_dir).name
        self.catalog = ItemCatalog(ck.item_ids, categories)
        self.item_index_hash = item_index_hash(ck.item_ids)
        self.meta = ck.meta
        self.loaded_at = time.time()

    def info(self) -> dict:
        return {"name": self.name, "path": self.path, "n_items": self.catalog.n,
                "item_index_hash": self.item_index_hash, "loaded_at": self.loaded_at,
                "epoch": self.meta.get("epoch"), "metrics": self.meta.get("metrics")}

    @torch.no_grad()
    def final_hidden(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, H_last): the last layer's state after each session's events (B >= 1, each
        sequence non-empty).  Shorter sessions stop updating once their events are read."""
        b = len(seqs)
        lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)  # (B,)
        t_max = int(lens.max())
        pad = torch.zeros(b, t_max, dtype=torch.long)  # (B, T)
        for i, s in enumerate(seqs):
            pad[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        hidden = self.model.init_hidden(b)
        for t in range(t_max):
            out, new = self.model(pad[:, t], hidden)
            if t >= int(lens.min()):
                live = (lens > t).unsqueeze(1)  # (B, 1)
                hidden = [torch.where(live, n, h) for n, h in zip(new, hidden)]
            else:
                hidden = new
        return hidden[-1]

    @torch.no_grad()
    def score_batch(self, reqs: Sequence[ScoreRequest], popularity: Popularity | None = None
                    ) -> list[ScoreResult]:
        """Top-K for each request: all items scored, excluded / filtered items removed.

        Scoring and top-K are fused (``GRU4Rec.topk`` -> ``rayrec.ops_kernels.topk_scores``,
        backend by ``RAYREC_KERNELS``): the request's ``exclude`` items are the op's per-row
        exclusion list and the category filters its ``item_mask``."""
        cat = self.catalog
        seqs, unknown = [], []
        for r in reqs:
            known = [cat.index[i] for i in r.items if i in cat.index]
            unknown.append(len(r.items) - len(known))
            seqs.append(known)
        results: list[ScoreResult | None] = [None] * len(reqs)
        live = [i for i, s in enumerate(seqs) if s]
        if live:
            h = self.final_hidden([seqs[i] for i in live])  # (B, H)
            # one fused scoring + top-K call (rayrec.ops_kernels.topk_scores) per distinct
            # category filter in the batch; the (B, N) score matrix is never built
            groups: dict[tuple, list[int]] = {}
            for row, i in enumerate(live):
                r = reqs[i]
                key = (tuple(sorted(r.include_categories)), tuple(sorted(r.exclude_categories)))
                groups.setdefault(key, []).append(row)
            for (inc, exc), grp in groups.items():
                allowed = cat.allowed_mask(list(inc), list(exc))  # (N,) bool or None
                excl = [[cat.index[x] for x in reqs[live[row]].exclude if x in cat.index]
                        for row in grp]
                kmax = max(1, max(min(reqs[live[row]].k, cat.n) for row in grp))
                hg = h if len(grp) == len(live) else h[torch.as_tensor(grp, dtype=torch.long)]
                vals, idx = self.model.topk(hg, kmax, exclude=excl, item_mask=allowed)  # (G, kmax)
                for g, row in enumerate(grp):
                    i = live[row]
                    k = max(0, min(reqs[i].k, cat.n))
                    v, j = vals[g, :k], idx[g, :k]
                    keep = j >= 0  # excluded / filtered items are never returned
                    results[i] = ScoreResult([cat.item_ids[t] for t in j[keep].tolist()],
                                             v[keep].tolist(), "session", unknown[i])
        pop = popularity or Popularity(cat)
        for i, r in enumerate(reqs):
            if results[i] is None:
                excl = {cat.index[x] for x in r.exclude if x in cat.index}
                allowed = cat.allowed_mask(r.include_categories, r.exclude_categories)
                top = pop.topk(r.k, excl, allowed)
                results[i] = ScoreResult([cat.item_ids[j] for j in top],
                                         [0.0] * len(top), "popularity", unknown[i])
        return results  # type: ignore[return-value]


def blend(
    session: Sequence[str],
    daily: Sequence[str],
    k: int,
    policy: BlendPolicy = "interleave",
    session_weight: float = 0.5,
) -> list[str]:
    """Merge two ranked lists into ``k`` distinct items.

    ``interleave`` alternates session, daily, session, ...; ``session_first`` /
    ``daily_first`` take one list then fill from the other; ``weighted`` ranks by
    ``w / (1 + rank_session) + (1 - w) / (1 + rank_daily)`` (rank-based, so the two models'
    score scales need not agree; ties keep the session order).
    """
    if k <= 0:
        return []
    out: list[str] = []
    seen: set[str] = set()

    def take(it: str) -> None:
        if it not in seen and len(out) < k:
            seen.add(it)
            out.append(it)

    if policy == "interleave":
        for a, b in zip_longest(session, daily):
            if a is not None:
                take(a)
            if b is not None:
                take(b)
    elif policy == "session_first":
        for it in list(session) + list(daily):
            take(it)
    elif policy == "daily_first":
        for it in list(daily) + list(session):
            take(it)
    elif policy == "weighted":
        w = float(session_weight)
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"session_weight must be in [0, 1], got {w}")
        score: dict[str, float] = {}
        first: dict[str, int] = {}
        for pos, (lst, wt) in enumerate(((session, w), (daily, 1.0 - w))):
            for r, it in enumerate(lst):
                score[it] = score.get(it, 0.0) + wt / (1.0 + r)
                first.setdefault(it, pos * 10**9 + r)
        for it in sorted(score, key=lambda x: (-score[x], first[x])):
            take(it)
    else:
        raise ValueError(f"blend policy must be one of interleave, weighted, session_first, "
                         f"daily_first; got {policy!r}")
    return out


def zip_longest(a: Sequence[str], b: Sequence[str]):
    n = max(len(a), len(b))
    for i in range(n):
        yield (a[i] if i < len(a) else None), (b[i] if i < len(b) else None)

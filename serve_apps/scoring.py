"""Serve-free model side of the recommender: model names, checkpoint loading, batched
scoring and the popularity fallback.  The session deployment
(:class:`rayrec.serve_apps.deployments.SessionRecommender`) is a thin wrapper around
:class:`SessionModel`, so served and offline top-K can be compared without Serve.

* :class:`SessionModel` loads ANY registered session model from its checkpoint
  (:func:`rayrec.platform.checkpoint.load_model`, weights loaded with ``weights_only``) and
  answers through the model's :class:`~rayrec.models.contract.ServableScorer`: the session's
  events are encoded (GRU4Rec, seed 003 section 3: the network reads the session's events one
  by one; the next-item scores are ``score(h_T)`` over the whole catalogue, as in
  evaluation), then one fused scoring + exclusion + top-K call (GRU4Rec:
  ``rayrec.ops_kernels.topk_scores``); the ``(B, N)`` score matrix is never built.
* A scorer with per-event context (``encode_events``, e.g. HRNN-meta, seed 001 section 2.2)
  replays the stored events with their times, types and values (the user's events across
  sessions for a scorer whose ``context_scope`` is ``user``), the last event's time delta
  measured to the request time: what the training batcher feeds, so served and offline top-K
  agree for equal events and time deltas.
* :class:`Popularity` keeps the popularity order fresh from the session store's online
  counters (the order itself is :func:`rayrec.serve_apps.policy.popularity_order`).
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rayrec.models.contract import ServableScorer
from rayrec.platform.checkpoint import CheckpointError, item_index_hash, load_model
from rayrec.serve_apps.messages import ModelInfo, ScoreRequest, ScoreResult
from rayrec.serve_apps.policy import ItemCatalog, blended_popularity, popularity_topk

__all__ = [
    "ModelNameError",
    "Popularity",
    "SessionModel",
    "read_item_metadata",
    "resolve_model_name",
    "resolve_model_path",
]

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}$")


class ModelNameError(ValueError):
    """A model name that is malformed or points outside the model directory."""


def resolve_model_path(model_dir: str | os.PathLike[str], name: str) -> Path:
    """``model_dir / name`` if ``name`` is a plain name of a directory inside ``model_dir``.

    Names used for multiplexing and rollouts come from requests and configs: no separators,
    no ``..``, no absolute paths, and the resolved path (symlinks followed) must stay inside
    ``model_dir``.
    """
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or ".." in name:
        raise ModelNameError(
            f"model name must match {MODEL_NAME.pattern} without '..', got {str(name)[:60]!r}"
        )
    root = Path(model_dir).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ModelNameError(f"model {name!r} resolves outside the model directory")
    if not path.is_dir():
        raise FileNotFoundError(f"model {name!r} not found in the model directory")
    return path


def resolve_model_name(model_dir: str | os.PathLike[str], name: str) -> str:
    """``"latest"`` -> the newest checkpoint directory in ``model_dir`` that holds a
    ``model.pt`` (newest by mtime, then by name); any other name is returned unchanged."""
    if name != "latest":
        return name
    root = Path(model_dir)
    cands = [p for p in root.iterdir() if p.is_dir() and (p / "model.pt").is_file()] \
        if root.is_dir() else []
    if not cands:
        raise FileNotFoundError(f"model 'latest': no checkpoint directory in {root}")
    return max(cands, key=lambda p: (p.stat().st_mtime, p.name)).name


def read_item_metadata(path: str | os.PathLike[str] | None, sep: str | None = "|"
                       ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``(item_id -> categories, item_id -> title)`` from a CSV/Parquet file with columns
    item_id, category and, optionally, title (the daily job's ``item_metadata.parquet``).
    ``category`` may hold several categories joined by ``sep`` (``Action|Comedy``; None: one
    category per item); empty ones are dropped."""
    if not path:
        return {}, {}
    import pandas as pd

    p = Path(path)
    df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, dtype=str)
    missing = {"item_id", "category"} - set(df.columns)
    if missing:
        raise ValueError(f"catalog.item_metadata {p}: missing column(s) {sorted(missing)}")
    df = df.dropna(subset=["item_id"])
    ids = df["item_id"].astype(str).tolist()
    cats: dict[str, list[str]] = {}
    for it, c in zip(ids, df["category"].tolist()):
        if c is None or (isinstance(c, float) and c != c) or c is pd.NA:
            continue
        parts = [x.strip() for x in (str(c).split(sep) if sep else [str(c)]) if x.strip()]
        if parts:
            cats[it] = parts
    titles: dict[str, str] = {}
    if "title" in df.columns:
        for it, t in zip(ids, df["title"].tolist()):
            if isinstance(t, str) and t:
                titles[it] = t
    return cats, titles


class Popularity:
    """Popularity fallback: the online distinct-session counts of the session store's window
    blended with the training popularity (:func:`rayrec.serve_apps.policy.blended_popularity`),
    refreshed every ``refresh_s``.  Every model (default or multiplexed) has its own, over its
    own catalogue, so both answer the same fallback for the same store."""

    def __init__(self, catalog: ItemCatalog, store=None, refresh_s: float = 5.0,
                 top_n: int = 1000, weight: float = 0.3, min_sessions: int = 20):
        self.catalog = catalog
        self.store = store
        self.refresh_s = float(refresh_s)
        self.top_n = int(top_n)
        self.weight = float(weight)
        self.min_sessions = int(min_sessions)
        self._order = blended_popularity(catalog.n)
        self._at = -1e18

    def order(self) -> np.ndarray:
        now = time.monotonic()
        if self.store is not None and now - self._at > self.refresh_s:
            self._at = now
            try:
                index = self.catalog.index
                online = [(index[i], c) for i, c in self.store.popular(self.top_n)
                          if i in index]
                total = self.store.window_sessions() if online else 0
            except Exception:
                return self._order  # store unreachable: keep the last order
            self._order = blended_popularity(self.catalog.n, online, total, self.weight,
                                             self.min_sessions)
        return self._order

    def topk(self, k: int, exclude_idx: set[int], allowed: torch.Tensor | None) -> list[int]:
        return popularity_topk(self.order(), k, exclude_idx, allowed)


class SessionModel:
    """A registered session model's checkpoint, ready to score sessions.

    Any model registered with ``kind="session"`` whose scorer is a
    :class:`~rayrec.models.contract.ServableScorer` is served; a checkpoint of another kind
    is refused (:class:`~rayrec.platform.checkpoint.CheckpointError`, with the reason)."""

    def __init__(self, ckpt_dir: str | os.PathLike[str], name: str | None = None,
                 categories: dict[str, str | list[str]] | None = None,
                 titles: dict[str, str] | None = None) -> None:
        loaded = load_model(ckpt_dir, kind="session")
        scorer = loaded.scorer()
        if not isinstance(scorer, ServableScorer):
            raise CheckpointError(
                f"{ckpt_dir}: the scorer of {loaded.spec.name!r} cannot serve (it needs "
                "encode and topk, rayrec.models.contract.ServableScorer)")
        self.spec = loaded.spec
        self.model = loaded.model
        self.scorer: ServableScorer = scorer
        self.path = str(ckpt_dir)
        self.name = name or Path(ckpt_dir).name
        self.catalog = ItemCatalog(loaded.item_ids, categories, titles)
        self.item_index_hash = item_index_hash(loaded.item_ids)
        self.meta = loaded.checkpoint.meta
        self.loaded_at = time.time()
        self.popularity: Popularity | None = None
        """The fallback order the session recommender gives this model (over the store)."""
        self._enc_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.enc_cache_size = 20_000
        """Encoded sessions kept (LRU, by ``ScoreRequest.cache_key``; H floats each)."""
        self.cache_hits = 0

    def info(self) -> ModelInfo:
        return ModelInfo(name=self.name, n_items=self.catalog.n,
                         item_index_hash=self.item_index_hash, loaded_at=self.loaded_at,
                         epoch=self.meta.get("epoch"), metrics=self.meta.get("metrics"))

    def _encode(self, reqs: Sequence[ScoreRequest], seqs: Sequence[Sequence[int]]
                ) -> torch.Tensor:
        """(B, D) encodings: cached ones (same session, same events) reused, the rest
        encoded in one ``scorer.encode`` call."""
        cache = self._enc_cache
        rows: list[torch.Tensor | None] = []
        for r in reqs:
            hit = cache.get(r.cache_key) if r.cache_key is not None else None
            if hit is not None:
                cache.move_to_end(r.cache_key)  # type: ignore[arg-type]
                self.cache_hits += 1
            rows.append(hit)
        miss = [j for j, h in enumerate(rows) if h is None]
        if len(miss) == len(rows):
            enc = self.scorer.encode(list(seqs))
            for j in miss:
                self._remember(reqs[j].cache_key, enc[j])
            return enc
        if miss:
            new = self.scorer.encode([seqs[j] for j in miss])
            for n, j in enumerate(miss):
                rows[j] = new[n]
                self._remember(reqs[j].cache_key, new[n])
        return torch.stack(rows)  # type: ignore[arg-type]

    def _replay(self, r: ScoreRequest) -> list[tuple[int, float, int, float | None]] | None:
        """The events a context scorer (``encode_events``) replays for ``r``: the user's stored
        events for a scorer with ``context_scope: user`` (when the session has a user), else
        the session's; as ``(item_idx, ts seconds, event code, value)`` of the catalogue's
        items. None: the scorer reads items only, or the request carries no events."""
        enc = getattr(self.scorer, "encode_events", None)
        if enc is None or r.events is None:
            return None
        user = getattr(self.scorer, "context_scope", "session") == "user" and r.user_events
        index, code = self.catalog.index, self.scorer.event_code  # type: ignore[attr-defined]
        rows = [(index[i], ts / 1000.0, code(ev), v)
                for i, ts, ev, v in (r.user_events if user else r.events) if i in index]
        return sorted(rows, key=lambda row: row[1])  # time order (stable: arrival order on ties)

    def _encode_live(self, reqs: Sequence[ScoreRequest], seqs: Sequence[Sequence[int]],
                     replay: Sequence[list | None], live: list[int]) -> torch.Tensor:
        """(B, D) for the ``live`` requests: replayed events through ``encode_events`` with
        the time delta of the last one to the request time (never cached: it changes with
        the clock), the rest through the cached :meth:`_encode`."""
        ctx = [i for i in live if replay[i] is not None]
        if not ctx:
            return self._encode([reqs[i] for i in live], [seqs[i] for i in live])
        plain = [i for i in live if replay[i] is None]
        now = []
        for i in ctx:  # an event in the accepted future skew counts as "no time elapsed"
            last = replay[i][-1][1]
            t = reqs[i].now_ms / 1000.0 if reqs[i].now_ms is not None else time.time()
            now.append(max(t, last))
        enc_ctx = self.scorer.encode_events([replay[i] for i in ctx], now)  # type: ignore[attr-defined]
        if not plain:
            return enc_ctx
        enc_plain = self._encode([reqs[i] for i in plain], [seqs[i] for i in plain])
        out = torch.empty(len(live), enc_ctx.shape[1], dtype=enc_ctx.dtype, device=enc_ctx.device)
        pos = {i: j for j, i in enumerate(live)}
        out[[pos[i] for i in ctx]] = enc_ctx
        out[[pos[i] for i in plain]] = enc_plain.to(out.device)
        return out

    def _remember(self, key: str | None, row: torch.Tensor) -> None:
        if key is None:
            return
        self._enc_cache[key] = row.detach().clone()
        if len(self._enc_cache) > self.enc_cache_size:
            self._enc_cache.popitem(last=False)

    @torch.no_grad()
    def score_batch(self, reqs: Sequence[ScoreRequest], popularity: Popularity | None = None
                    ) -> list[ScoreResult]:
        """Top-K for each request: all items scored, excluded / filtered items removed.

        The sessions with known items are encoded in one call (``scorer.encode``); scoring
        and top-K are fused (``scorer.topk``; GRU4Rec: ``rayrec.ops_kernels.topk_scores``,
        backend by ``RAYREC_KERNELS``), one call per distinct category filter in the batch,
        with the request's ``exclude`` items as the per-row exclusion lists and the category
        filter as the ``item_mask``.  Requests without a known item get the popularity
        fallback (``popularity``, default: the training order)."""
        cat = self.catalog
        seqs = [cat.indices(r.items) for r in reqs]
        unknown = [len(r.items) - len(s) for r, s in zip(reqs, seqs)]
        replay = [self._replay(r) for r in reqs]  # per-event context rows, or None
        for i, rows in enumerate(replay):
            if rows is not None:
                seqs[i] = [row[0] for row in rows]
        results: list[ScoreResult | None] = [None] * len(reqs)
        live = [i for i, s in enumerate(seqs) if s]
        if live:
            enc = self._encode_live(reqs, seqs, replay, live)  # (B, D)
            groups: dict[tuple, list[int]] = {}
            for row, i in enumerate(live):
                r = reqs[i]
                key = (tuple(sorted(r.include_categories)), tuple(sorted(r.exclude_categories)))
                groups.setdefault(key, []).append(row)
            for (inc, exc), grp in groups.items():
                allowed = cat.allowed_mask(list(inc), list(exc))  # (N,) bool or None
                excl = [cat.indices(reqs[live[row]].exclude) for row in grp]
                kmax = max(1, max(min(reqs[live[row]].k, cat.n) for row in grp))
                eg = enc if len(grp) == len(live) else enc[torch.as_tensor(grp, dtype=torch.long)]
                vals, idx = self.scorer.topk(eg, kmax, exclude=excl, item_mask=allowed)  # (G, kmax)
                vals, idx = vals.cpu(), idx.cpu()
                for g, row in enumerate(grp):
                    i = live[row]
                    k = max(0, min(reqs[i].k, cat.n))
                    v, j = vals[g, :k], idx[g, :k]
                    keep = j >= 0  # excluded / filtered items are never returned
                    results[i] = ScoreResult([cat.item_ids[t] for t in j[keep].tolist()],
                                             v[keep].tolist(), "session", unknown[i], self.name)
        pop = popularity or Popularity(cat)
        for i, r in enumerate(reqs):
            if results[i] is None:
                allowed = cat.allowed_mask(r.include_categories, r.exclude_categories)
                top = pop.topk(r.k, set(cat.indices(r.exclude)), allowed)
                results[i] = ScoreResult([cat.item_ids[j] for j in top], [0.0] * len(top),
                                         "popularity", unknown[i], self.name)
        return results  # type: ignore[return-value]

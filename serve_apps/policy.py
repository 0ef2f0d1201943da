"""What the recommender answers, as pure functions (no Serve, no Ray, no I/O).

The deployments in :mod:`rayrec.serve_apps.deployments` fetch state (session store, daily
store, model scores) and hand it to these functions; every decision about which items a
response may hold and in which order is made here, once:

* :func:`exclusions`: the items a list must not contain (the request's explicit
  ``exclude_items`` plus, when consumed items are excluded, the session's and the user's
  items).  Every endpoint computes its exclusions with it.
* :class:`ItemCatalog` and :func:`filter_ranked`: the category include / exclude filters
  (multi-valued categories: any match counts) and the per-item metadata of responses.
* :func:`blend`: a session list and a daily list merged into one (seed 004's point: the
  session model catches the current intent, the collaborative daily model the long-term
  taste); :func:`blend_source` names what the answer came from.
* :func:`popularity_order`, :func:`blended_popularity`, :func:`popularity_topk`,
  :func:`fill`: the popularity fallback (online distinct-session counts blended with the
  training popularity) and the fill of a short list.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Literal, get_args

import numpy as np
import torch

__all__ = [
    "BLEND_POLICIES",
    "BlendPolicy",
    "ItemCatalog",
    "blend",
    "blend_source",
    "blended_popularity",
    "exclude_consumed",
    "exclusions",
    "fill",
    "filter_ranked",
    "popularity_order",
    "popularity_topk",
    "rank_scores",
    "resolve_k",
]

BlendPolicy = Literal["interleave", "weighted", "session_first", "daily_first"]
BLEND_POLICIES: tuple[str, ...] = get_args(BlendPolicy)


# ---- request options ----------------------------------------------------------------------
def resolve_k(k: int | None, default_k: int, max_k: int) -> int:
    """The list length of a request: ``k`` or ``default_k``; over ``max_k`` is an error."""
    k = default_k if k is None else int(k)
    if k > max_k:
        raise ValueError(f"k must be <= {max_k}, got {k}")
    return k


def exclude_consumed(requested: bool | None, default: bool) -> bool:
    """Whether consumed items are excluded: the request's choice, else the configured one."""
    return default if requested is None else bool(requested)


def exclusions(explicit: Iterable[str], consumed: Iterable[Iterable[str]] = ()) -> list[str]:
    """The items a recommendation list must not contain, each once, first-seen order.

    ``explicit``: the request's ``exclude_items``; ``consumed``: the consumed-item lists to
    exclude as well (the session's items, the user's items, items already chosen for the
    list), or ``()`` when consumed items are kept (see :func:`exclude_consumed`).
    """
    return list(dict.fromkeys(itertools.chain(explicit, *consumed)))


# ---- filters ------------------------------------------------------------------------------
class ItemCatalog:
    """The item index (``item_ids[i]`` is item_idx ``i``) plus optional categories and titles,
    and the category include / exclude filters over them.

    ``categories``: ``item_id -> category`` or ``item_id -> [categories]`` (multi-valued: an
    item matches an include filter when *any* of its categories is included, and is removed
    by an exclude filter when any of them is excluded); ``titles``: ``item_id -> title``."""

    def __init__(self, item_ids: Sequence[str],
                 categories: Mapping[str, str | Sequence[str]] | None = None,
                 titles: Mapping[str, str] | None = None):
        self.item_ids = list(item_ids)
        self.index = {it: i for i, it in enumerate(self.item_ids)}
        self.n = len(self.item_ids)
        self.categories_of: dict[str, tuple[str, ...]] = {
            it: (c,) if isinstance(c, str) else tuple(dict.fromkeys(c))
            for it, c in (categories or {}).items()}
        self.titles = dict(titles or {})
        self.categories = sorted({c for cs in self.categories_of.values() for c in cs})
        self._code = {c: i for i, c in enumerate(self.categories)}
        members: list[list[int]] = [[] for _ in self.categories]
        for it, cs in self.categories_of.items():
            j = self.index.get(it)
            if j is not None:
                for c in cs:
                    members[self._code[c]].append(j)
        self._members = [np.asarray(m, dtype=np.int64) for m in members]  # per category: item_idx
        self._mask_cache: dict[tuple, torch.Tensor | None] = {}

    def indices(self, item_ids: Iterable[str]) -> list[int]:
        """item_idx of the ids in the catalogue (unknown ids dropped), in the given order."""
        index = self.index
        return [index[i] for i in item_ids if i in index]

    def check_categories(self, names: Iterable[str], field: str) -> None:
        """ValueError naming ``field`` and the known categories if a name is unknown."""
        unknown = [c for c in names if c not in self._code]
        if unknown:
            known = ", ".join(self.categories[:20]) or "(no item metadata loaded)"
            raise ValueError(f"{field}: unknown categor(y/ies) {unknown[:5]}; known: {known}")

    def _any_of(self, names: Sequence[str]) -> np.ndarray:
        m = np.zeros(self.n, dtype=bool)
        for c in names:
            m[self._members[self._code[c]]] = True
        return m

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
            m = self._any_of(include) if include else np.ones(self.n, dtype=bool)
            if exclude:
                m &= ~self._any_of(exclude)
            if len(self._mask_cache) > 256:
                self._mask_cache.clear()
            self._mask_cache[key] = torch.from_numpy(m)
        return self._mask_cache[key]

    def allowed(self, item_id: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
        """The category filters for one id (ids without a category pass ``exclude`` only)."""
        cs = self.categories_of.get(item_id, ())
        if include and not any(c in include for c in cs):
            return False
        return not (exclude and any(c in exclude for c in cs))

    def metadata(self, item_id: str) -> dict:
        """``{item_id, categories, title}`` of one id (``[]`` / None when unknown)."""
        return {"item_id": item_id, "categories": list(self.categories_of.get(item_id, ())),
                "title": self.titles.get(item_id) or None}


def filter_ranked(
    items: Iterable[str], excluded: Collection[str], allowed: Callable[[str], bool]
) -> list[str]:
    """``items`` (ranked) without the excluded ones and those ``allowed`` refuses, in order."""
    return [i for i in items if i not in excluded and allowed(i)]


# ---- popularity fallback ------------------------------------------------------------------
def popularity_order(n_items: int, online: Iterable[int] = ()) -> np.ndarray:
    """All item_idx, most popular first: the online counters' items (``online``, most counted
    first; out-of-range and repeated indices dropped), then the rest in training popularity
    order (item_idx 0 = most popular in training)."""
    head = [j for j in dict.fromkeys(int(j) for j in online) if 0 <= j < n_items]
    if not head:
        return np.arange(n_items, dtype=np.int64)
    head_a = np.asarray(head, dtype=np.int64)
    rest = np.setdiff1d(np.arange(n_items, dtype=np.int64), head_a)  # sorted: training order
    return np.concatenate([head_a, rest])


def blended_popularity(
    n_items: int,
    online: Iterable[tuple[int, float]] = (),
    window_sessions: int = 0,
    weight: float = 0.3,
    min_sessions: int = 20,
) -> np.ndarray:
    """All item_idx, most popular first, by ``(1 - weight) * p_train + weight * p_online``.

    ``p_train``: the training popularity as a distribution over the rank (item_idx 0 = most
    popular; Zipf, ``1 / (1 + idx)`` normalised: checkpoints keep the order, not the counts);
    ``p_online``: the online counts (``(item_idx, distinct sessions in the window)``)
    normalised to sum 1.  With fewer than ``min_sessions`` distinct sessions in the window
    the online counts are ignored (a handful of sessions is not popularity), and one item
    can gain at most ``weight`` of the probability mass, however many events it gets.
    Ties keep the training order."""
    base = np.arange(n_items, dtype=np.int64)
    counts = [(int(j), float(c)) for j, c in online if 0 <= int(j) < n_items and c > 0]
    if not counts or window_sessions < min_sessions or weight <= 0 or n_items == 0:
        return base
    p_train = 1.0 / (1.0 + base.astype(np.float64))
    p_train /= p_train.sum()
    p_online = np.zeros(n_items, dtype=np.float64)
    for j, c in counts:
        p_online[j] += c
    p_online /= p_online.sum()
    score = (1.0 - weight) * p_train + weight * p_online
    return np.argsort(-score, kind="stable").astype(np.int64)


def popularity_topk(
    order: Iterable[int], k: int, exclude_idx: Collection[int], allowed: torch.Tensor | None
) -> list[int]:
    """The first ``k`` item_idx of ``order`` that are not excluded and pass ``allowed``
    ((N,) bool, None = all)."""
    out: list[int] = []
    if k <= 0:
        return out
    for j in order:
        j = int(j)
        if j in exclude_idx or (allowed is not None and not bool(allowed[j])):
            continue
        out.append(j)
        if len(out) >= k:
            break
    return out


def fill(items: Sequence[str], candidates: Iterable[str], k: int) -> list[str]:
    """``items`` topped up to ``k`` with the ``candidates`` not yet in it (e.g. the popularity
    list when the daily list and the session list together are too short)."""
    out = list(items)[: max(k, 0)]
    seen = set(out)
    for it in candidates:
        if len(out) >= k:
            break
        if it not in seen:
            seen.add(it)
            out.append(it)
    return out


# ---- blending -----------------------------------------------------------------------------
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
    if policy not in BLEND_POLICIES:
        raise ValueError(f"blend policy must be one of {', '.join(BLEND_POLICIES)}; "
                         f"got {policy!r}")
    if k <= 0:
        return []
    if policy == "interleave":
        merged: Iterable[str] = (it for pair in itertools.zip_longest(session, daily)
                                 for it in pair if it is not None)
    elif policy == "session_first":
        merged = itertools.chain(session, daily)
    elif policy == "daily_first":
        merged = itertools.chain(daily, session)
    else:  # weighted
        w = float(session_weight)
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"session_weight must be in [0, 1], got {w}")
        score: dict[str, float] = {}
        first: dict[str, int] = {}
        for pos, (lst, wt) in enumerate(((session, w), (daily, 1.0 - w))):
            for r, it in enumerate(lst):
                score[it] = score.get(it, 0.0) + wt / (1.0 + r)
                first.setdefault(it, pos * 10**9 + r)
        merged = sorted(score, key=lambda x: (-score[x], first[x]))
    return fill([], merged, k)


def blend_source(has_daily: bool, has_session: bool) -> str:
    """The ``source`` of a user's answer: ``blend`` (both lists), ``daily``, ``session``, or
    ``popularity`` (neither: the answer is the popularity fill)."""
    if has_session:
        return "blend" if has_daily else "session"
    return "daily" if has_daily else "popularity"


def item_sources(items: Sequence[str], session: Sequence[str], daily: Sequence[str]) -> list[str]:
    """Where each item of a blended answer came from: ``session`` (the live session's list),
    ``daily`` (the published daily list), ``session+daily`` (in both) or ``popularity`` (the
    fill)."""
    s, d = set(session), set(daily)
    return ["session+daily" if (i in s and i in d) else "session" if i in s else "daily" if i in d
            else "popularity" for i in items]


def rank_scores(n: int) -> list[float]:
    """Rank scores ``n, n-1, ..., 1`` for a blended list (the daily and session models'
    scores are on different scales, so a blended answer reports ranks)."""
    return [float(n - r) for r in range(n)]

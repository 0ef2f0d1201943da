"""Classic session-based baselines of seed 003 section 4.1 (pure torch / numpy, no I/O).

Each baseline has a frozen pydantic config (``name`` discriminates it in job configs) and a fit
function ``fit_<name>(config, train_offsets, train_items, n_items, train_ts=None)`` returning a
scorer that implements the ``SessionScorer`` interface of
``rayrec.platform.evaluation.protocols`` (``n_items``, ``init_state``, ``step``, ``select``).
:func:`fit` dispatches on the config type.

Training data is given as CSR session arrays: ``train_offsets`` int64 (S+1,), ``train_items``
int64 (E,) item indices in ``[0, n_items)`` with each session's events in time order, and
optionally ``train_ts`` (E,) event times in seconds aligned with ``train_items``.

* POP: global training popularity (event counts).
* S-POP: the current session's item counts so far; ties broken by global popularity.
* Item-KNN: items similar to the current (last) item; cosine similarity of the items' session
  vectors with a regularisation ``lambda`` in the denominator.
* BPR-MF (Rendle et al. 2009, used as in seed 003 section 4.1): a session is the average of its
  items' factors so far.
* Recent popularity: event counts within the last ``window_days`` of training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from rayrec.models.registry import ModelSpec, register

__all__ = [
    "PopConfig",
    "SPopConfig",
    "ItemKNNConfig",
    "BPRMFConfig",
    "RecentPopConfig",
    "StaticScorer",
    "SPopScorer",
    "ItemKNNScorer",
    "BPRMFScorer",
    "fit",
    "fit_pop",
    "fit_spop",
    "fit_item_knn",
    "fit_bpr_mf",
    "fit_recent_pop",
    "item_counts",
]


class _BaselineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PopConfig(_BaselineConfig):
    """POP: always recommend the most popular training items (seed 003 section 4.1)."""

    name: Literal["pop"] = "pop"


class SPopConfig(_BaselineConfig):
    """S-POP: most popular items of the current session, ties by global popularity."""

    name: Literal["spop"] = "spop"


class ItemKNNConfig(_BaselineConfig):
    """Item-KNN (seed 003 section 4.1).

    ``sim(i, j) = cooc(i, j) / (sqrt(supp_i * supp_j) + lambda_)`` where ``cooc`` counts the
    training sessions holding both items and ``supp_i`` the sessions holding item i: the paper's
    "number of co-occurrences of two items in sessions divided by the square root of the product
    of the numbers of sessions in which the individual items occurred", with the regulariser
    lambda added to the denominator so that rarely seen pairs do not get coincidentally high
    similarities.  ``sim(i, i) = 0``.  ``n_neighbors`` keeps only the top-M neighbours per item
    (None = all, fine for small catalogues; the dense matrix needs ``4 * n_items**2`` bytes).
    """

    name: Literal["item_knn"] = "item_knn"
    lambda_: float = Field(20.0, ge=0.0)
    n_neighbors: int | None = Field(None, ge=1)


class BPRMFConfig(_BaselineConfig):
    """BPR-MF with training sessions as users; at test time a session is represented by the
    mean of its items' factors so far (seed 003 section 4.1)."""

    name: Literal["bpr_mf"] = "bpr_mf"
    n_factors: int = Field(64, ge=1)
    epochs: int = Field(10, ge=1)
    lr: float = Field(0.05, gt=0.0)
    reg: float = Field(1e-4, ge=0.0)
    batch_size: int = Field(1024, ge=1)
    seed: int = 0


class RecentPopConfig(_BaselineConfig):
    """Popularity over the last ``window_days`` of training (ties by all-time popularity)."""

    name: Literal["recent_pop"] = "recent_pop"
    window_days: float = Field(1.0, gt=0.0)


# ----------------------------------------------------------------------------- helpers


def _check_train(train_offsets: np.ndarray, train_items: np.ndarray, n_items: int) -> tuple:
    offsets = np.asarray(train_offsets, dtype=np.int64)
    items = np.asarray(train_items, dtype=np.int64)
    if n_items < 1:
        raise ValueError(f"n_items must be positive, got {n_items}")
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != items.size:
        raise ValueError(
            f"train_offsets must be 1-D, start at 0 and end at len(train_items)={items.size}"
        )
    if np.any(np.diff(offsets) < 0):
        raise ValueError("train_offsets must be non-decreasing")
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(
            f"train_items out of range [0, {n_items}): min {int(items.min())}, "
            f"max {int(items.max())}"
        )
    return offsets, items


def item_counts(train_items: np.ndarray, n_items: int) -> np.ndarray:
    """Event count per item, (n_items,) float64."""
    return np.bincount(np.asarray(train_items, dtype=np.int64), minlength=n_items).astype(
        np.float64
    )


def _tiebreak(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """``primary + secondary / (max(secondary) + 1)``: orders by the integer-valued primary,
    then by secondary, without changing the primary order (secondary term stays below 1)."""
    sec = np.asarray(secondary, dtype=np.float64)
    return np.asarray(primary, dtype=np.float64) + sec / (sec.max(initial=0.0) + 1.0)


# ----------------------------------------------------------------------------- scorers


class StaticScorer:
    """Scores that do not depend on the session (POP, recent popularity)."""

    def __init__(self, scores: torch.Tensor) -> None:
        if scores.dim() != 1:
            raise ValueError(f"scores must be 1-D (n_items,), got {tuple(scores.shape)}")
        self.scores = scores.to(torch.float64)
        self.n_items = int(scores.shape[0])

    def init_state(self, batch_size: int) -> int:
        return int(batch_size)

    def step(self, state: int, items: torch.Tensor, reset: torch.Tensor) -> tuple:
        b = items.shape[0]
        return self.scores.to(items.device).unsqueeze(0).expand(b, -1), b  # (B, N)

    def select(self, state: int, rows: torch.Tensor) -> int:
        return int(rows.shape[0])


class SPopScorer:
    """S-POP: state is the (B, N) item-count vector of each row's session so far; scores are
    ``count + pop / (max(pop) + 1)`` so session counts rank first and global popularity breaks
    their ties."""

    def __init__(self, pop: torch.Tensor) -> None:
        self.pop = pop.to(torch.float64)
        self.n_items = int(pop.shape[0])
        self._tb = self.pop / (self.pop.max() + 1.0)  # (N,) in [0, 1)

    def init_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros((batch_size, self.n_items), dtype=torch.float64)

    def step(self, state: torch.Tensor, items: torch.Tensor, reset: torch.Tensor) -> tuple:
        state = state.to(items.device)
        state = state.masked_fill(reset.unsqueeze(1), 0.0)
        rows = torch.arange(items.shape[0], device=items.device)
        state = state.index_put(
            (rows, items), torch.ones_like(rows, dtype=state.dtype), accumulate=True
        )
        return state + self._tb.to(items.device).unsqueeze(0), state

    def select(self, state: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return state[rows.to(state.device)]


class ItemKNNScorer:
    """Scores the next item by its similarity to the current (last) item only; the state is
    unused beyond the batch size because the recommendation depends on the last event alone."""

    def __init__(
        self,
        n_items: int,
        dense: torch.Tensor | None = None,
        nbr_idx: torch.Tensor | None = None,
        nbr_val: torch.Tensor | None = None,
    ) -> None:
        self.n_items = int(n_items)
        self.dense = dense  # (N, N) or None
        self.nbr_idx = nbr_idx  # (N, M) long
        self.nbr_val = nbr_val  # (N, M) float

    def init_state(self, batch_size: int) -> int:
        return int(batch_size)

    def step(self, state: int, items: torch.Tensor, reset: torch.Tensor) -> tuple:
        if self.dense is not None:
            return self.dense.to(items.device)[items], items.shape[0]  # (B, N)
        out = torch.zeros(
            (items.shape[0], self.n_items), dtype=self.nbr_val.dtype, device=items.device
        )
        out.scatter_(1, self.nbr_idx.to(items.device)[items], self.nbr_val.to(items.device)[items])
        return out, items.shape[0]

    def select(self, state: int, rows: torch.Tensor) -> int:
        return int(rows.shape[0])


class BPRMFScorer:
    """BPR-MF at test time: session vector = mean of the factors of the session's items so far;
    ``score_i = b_i + <q_i, mean_{j in session} q_j>``.  State: (sum of factors (B, F),
    event counts (B,))."""

    def __init__(self, item_factors: torch.Tensor, item_bias: torch.Tensor) -> None:
        self.item_factors = item_factors.detach().float()  # (N, F)
        self.item_bias = item_bias.detach().float()  # (N,)
        self.n_items = int(item_factors.shape[0])

    def init_state(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.item_factors.shape[1]
        return torch.zeros((batch_size, f)), torch.zeros(batch_size)

    def step(self, state: tuple, items: torch.Tensor, reset: torch.Tensor) -> tuple:
        dev = items.device
        q = self.item_factors.to(dev)
        s, c = state[0].to(dev), state[1].to(dev)
        s = s.masked_fill(reset.unsqueeze(1), 0.0) + q[items]  # (B, F)
        c = c.masked_fill(reset, 0.0) + 1.0  # (B,)
        user = s / c.unsqueeze(1)  # (B, F)
        return user @ q.T + self.item_bias.to(dev).unsqueeze(0), (s, c)  # (B, N)

    def select(self, state: tuple, rows: torch.Tensor) -> tuple:
        return state[0][rows.to(state[0].device)], state[1][rows.to(state[1].device)]


# ----------------------------------------------------------------------------- fit functions


def fit_pop(
    config: PopConfig,
    train_offsets: np.ndarray,
    train_items: np.ndarray,
    n_items: int,
    train_ts: np.ndarray | None = None,
) -> StaticScorer:
    """POP: score = training event count of the item (equal counts tie)."""
    _, items = _check_train(train_offsets, train_items, n_items)
    return StaticScorer(torch.from_numpy(item_counts(items, n_items)))


def fit_spop(
    config: SPopConfig,
    train_offsets: np.ndarray,
    train_items: np.ndarray,
    n_items: int,
    train_ts: np.ndarray | None = None,
) -> SPopScorer:
    """S-POP (seed 003 section 4.1): session counts, ties broken by global popularity."""
    _, items = _check_train(train_offsets, train_items, n_items)
    return SPopScorer(torch.from_numpy(item_counts(items, n_items)))


def _session_item_pairs(offsets: np.ndarray, items: np.ndarray, n_items: int) -> tuple:
    """Distinct (session, item) pairs: returns (session_idx (P,), item_idx (P,))."""
    sess = np.repeat(np.arange(offsets.size - 1, dtype=np.int64), np.diff(offsets))  # (E,)
    key = np.unique(sess * n_items + items)
    return key // n_items, key % n_items


def fit_item_knn(
    config: ItemKNNConfig,
    train_offsets: np.ndarray,
    train_items: np.ndarray,
    n_items: int,
    train_ts: np.ndarray | None = None,
    chunk_size: int = 2048,
) -> ItemKNNScorer:
    """Item-KNN (seed 003 section 4.1); see :class:`ItemKNNConfig` for the similarity."""
    offsets, items = _check_train(train_offsets, train_items, n_items)
    s_idx, i_idx = _session_item_pairs(offsets, items, n_items)
    n_sess = offsets.size - 1
    supp = np.bincount(i_idx, minlength=n_items).astype(np.float64)  # sessions per item
    # Binary session x item incidence, and its transpose for row chunks of items.
    ones = torch.ones(s_idx.size, dtype=torch.float32)
    inc = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([s_idx, i_idx])),
        ones,
        (n_sess, n_items),
        check_invariants=True,
    ).coalesce()  # (S, N)
    inc_t = inc.t().coalesce()  # (N, S)
    sqrt_supp = torch.from_numpy(np.sqrt(supp)).to(torch.float64)  # (N,)
    m = config.n_neighbors
    keep_dense = m is None or m >= n_items
    dense = torch.zeros((n_items, n_items), dtype=torch.float32) if keep_dense else None
    nbr_idx_parts, nbr_val_parts = [], []
    for start in range(0, n_items, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, n_items))
        with warnings.catch_warnings():  # torch flags its sparse kernels as beta
            warnings.simplefilter("ignore", UserWarning)
            block = torch.sparse.mm(inc_t.index_select(0, rows), inc).to_dense()  # (c, N) cooc
        denom = sqrt_supp[rows].unsqueeze(1) * sqrt_supp.unsqueeze(0) + config.lambda_  # (c, N)
        sim = (block.to(torch.float64) / denom.clamp_min(1e-12)).to(torch.float32)
        sim[torch.arange(rows.numel()), rows] = 0.0  # no self-similarity
        if keep_dense:
            dense[rows] = sim
        else:
            val, idx = torch.topk(sim, m, dim=1)
            nbr_idx_parts.append(idx)
            nbr_val_parts.append(val)
    if keep_dense:
        return ItemKNNScorer(n_items, dense=dense)
    return ItemKNNScorer(
        n_items, nbr_idx=torch.cat(nbr_idx_parts), nbr_val=torch.cat(nbr_val_parts)
    )


def fit_bpr_mf(
    config: BPRMFConfig,
    train_offsets: np.ndarray,
    train_items: np.ndarray,
    n_items: int,
    train_ts: np.ndarray | None = None,
) -> BPRMFScorer:
    """BPR-MF (Rendle et al. 2009): training sessions are users; for each distinct
    (session, item) pair a negative item is drawn uniformly and
    ``-log sigmoid(x_ui - x_uj) + reg * ||params||^2`` is minimised with Adam, where
    ``x_ui = b_i + <p_u, q_i>``.  Seeded with ``config.seed``."""
    offsets, items = _check_train(train_offsets, train_items, n_items)
    s_idx, i_idx = _session_item_pairs(offsets, items, n_items)
    if s_idx.size == 0:
        raise ValueError("BPR-MF needs at least one training event")
    gen = torch.Generator().manual_seed(config.seed)
    n_sess = offsets.size - 1
    f = config.n_factors
    p = torch.nn.Parameter(torch.randn((n_sess, f), generator=gen) * 0.01)  # (S, F)
    q = torch.nn.Parameter(torch.randn((n_items, f), generator=gen) * 0.01)  # (N, F)
    b = torch.nn.Parameter(torch.zeros(n_items))
    opt = torch.optim.Adam([p, q, b], lr=config.lr)
    users = torch.from_numpy(s_idx)
    pos = torch.from_numpy(i_idx)
    n = users.numel()
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, config.batch_size):
            sel = perm[start : start + config.batch_size]
            u, i = users[sel], pos[sel]
            j = torch.randint(0, n_items, (sel.numel(),), generator=gen)
            pu, qi, qj = p[u], q[i], q[j]
            x = (b[i] - b[j]) + (pu * (qi - qj)).sum(1)  # (b,)
            loss = (
                -torch.nn.functional.logsigmoid(x).mean()
                + config.reg * (pu.pow(2).sum() + qi.pow(2).sum() + qj.pow(2).sum()) / sel.numel()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return BPRMFScorer(q.detach(), b.detach())


def fit_recent_pop(
    config: RecentPopConfig,
    train_offsets: np.ndarray,
    train_items: np.ndarray,
    n_items: int,
    train_ts: np.ndarray | None = None,
) -> StaticScorer:
    """Event counts within ``(t_max - window_days * 86400, t_max]`` of the training times, ties
    broken by all-time popularity."""
    _, items = _check_train(train_offsets, train_items, n_items)
    if train_ts is None:
        raise ValueError("recent_pop needs train_ts (event times in seconds)")
    ts = np.asarray(train_ts, dtype=np.float64)
    if ts.shape != items.shape:
        raise ValueError(f"train_ts has shape {ts.shape}, expected {items.shape}")
    if items.size == 0:
        return StaticScorer(torch.zeros(n_items, dtype=torch.float64))
    recent = ts > ts.max() - config.window_days * 86400.0
    scores = _tiebreak(item_counts(items[recent], n_items), item_counts(items, n_items))
    return StaticScorer(torch.from_numpy(scores))


_FITTERS: dict[type, Callable[..., Any]] = {
    PopConfig: fit_pop,
    SPopConfig: fit_spop,
    ItemKNNConfig: fit_item_knn,
    BPRMFConfig: fit_bpr_mf,
    RecentPopConfig: fit_recent_pop,
}


def fit(
    config: _BaselineConfig,
    train_offsets: np.ndarray,
    train_items: np.ndarray,
    n_items: int,
    train_ts: np.ndarray | None = None,
) -> Any:
    """Fit the baseline named by ``config`` and return its SessionScorer."""
    fitter = _FITTERS.get(type(config))
    if fitter is None:
        raise TypeError(f"not a baseline config: {type(config).__name__}")
    return fitter(config, train_offsets, train_items, n_items, train_ts)


for _cfg, _fitter in _FITTERS.items():
    register(ModelSpec(_cfg.model_fields["name"].default, _cfg, _fitter, "baseline"))


# ---------------------------------------------------------------------------- history baselines
# (seed 002 section 5.2): score candidate items given a user's history; same interface as
# rayrec.models.attention_cf.score_candidates: (histories, candidates (T, C), -1 pads) -> (T, C)

HISTORY_BASELINES = ("popularity", "last_item", "weighted_sum")


def popularity_scores(distinct_user_counts: np.ndarray):
    """Section 5.2 "Popularity": candidates by the number of distinct training users who
    interacted with them (eq. 5's counts), the same for every user."""
    pop = np.asarray(distinct_user_counts, dtype=np.float64)

    def score(histories, candidates):
        cand = np.asarray(candidates)
        return np.where(cand >= 0, pop[np.clip(cand, 0, None)], -np.inf)

    return score


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def last_item_scores(item_vectors: np.ndarray):
    """Section 5.2 "Last Item": cosine (embedding space) between each candidate and the newest
    history item (histories are oldest first)."""
    xn = _unit(item_vectors)

    def score(histories, candidates):
        cand = np.asarray(candidates)
        last = xn[np.array([h[-1] for h in histories], dtype=np.int64)]  # (T, d)
        s = np.einsum("td,tcd->tc", last, xn[np.clip(cand, 0, None)])
        return np.where(cand >= 0, s, -np.inf)

    return score


def weighted_sum_scores(item_vectors: np.ndarray, tau_rank: float = 5.0):
    """Section 5.2 "Weighted Sum" (a simplified heuristic, no CMA-ES): cosine between each
    candidate and the history mean weighted ``exp(-rank / tau_rank)`` (rank 0 = newest)."""
    xn = _unit(item_vectors)

    def score(histories, candidates):
        cand = np.asarray(candidates)
        u = np.stack([(np.exp(-np.arange(len(h))[::-1] / tau_rank)[:, None] * xn[np.asarray(h)]).sum(0)
                      for h in histories])
        s = np.einsum("td,tcd->tc", _unit(u), xn[np.clip(cand, 0, None)])
        return np.where(cand >= 0, s, -np.inf)

    return score

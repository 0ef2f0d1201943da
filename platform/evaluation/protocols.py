"""Evaluation protocols: how test data is fed to a model and which metrics come out.

* ``next_item`` (seed 003 section 4): session events are fed one by one; after each event but
  the last, the next item is ranked over *all* items (conservative ties) and Recall/MRR@K are
  averaged over every (prefix, next item) pair.  Sessions run in session-parallel batches
  (seed 003 section 3.1.1).
* ``future_window`` (seed 000 section 2 and 3.1): a user's input window predicts the items of a
  later window; Precision@K (eq. 1) and PCC@K (eq. 2).  Only the top-K is needed: for a model
  with a linear output layer :func:`evaluate_future_window_topk` gets it from the fused
  ``rayrec.ops_kernels.topk_scores`` (input items as the exclusion list); ``next_item`` and
  ``sampled_candidates`` need the target's full rank and keep scoring every item.
* ``sampled_candidates`` (seed 002 section 5): the target is ranked among N negatives drawn from
  the training popularity raised to ``gamma``.

Every result dict records its ``"protocol"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from rayrec.models.contract import SessionScorer
from rayrec.ops_kernels import pad_exclusions, topk_scores
from rayrec.platform.evaluation.metrics import (
    RankAccumulator,
    catalog_coverage,
    pcc_at_k,
    precision_at_k,
    ranks_conservative,
)

__all__ = [
    "SessionScorer",
    "validate_csr",
    "evaluate_next_item",
    "evaluate_future_window",
    "evaluate_future_window_topk",
    "evaluate_sampled_candidates",
]


def validate_csr(offsets: np.ndarray, items: np.ndarray, n_items: int | None = None) -> None:
    """Check CSR session arrays: ``offsets`` (S+1,) non-decreasing from 0 to ``len(items)``;
    ``items`` (E,) integer indices in ``[0, n_items)`` when ``n_items`` is given."""
    offsets = np.asarray(offsets)
    items = np.asarray(items)
    if offsets.ndim != 1 or offsets.size < 1:
        raise ValueError(f"offsets must be 1-D with S+1 >= 1 entries, got shape {offsets.shape}")
    if items.ndim != 1:
        raise ValueError(f"items must be 1-D, got shape {items.shape}")
    if not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"offsets must be integers, got dtype {offsets.dtype}")
    if items.size and not np.issubdtype(items.dtype, np.integer):
        raise ValueError(f"items must be integers, got dtype {items.dtype}")
    if offsets[0] != 0 or offsets[-1] != items.size:
        raise ValueError(
            f"offsets must start at 0 and end at len(items)={items.size}; "
            f"got {int(offsets[0])}..{int(offsets[-1])}"
        )
    if np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be non-decreasing")
    if n_items is not None and items.size:
        lo, hi = int(items.min()), int(items.max())
        if lo < 0 or hi >= n_items:
            raise ValueError(f"items out of range [0, {n_items}): min {lo}, max {hi}")


def evaluate_next_item(
    scorer: SessionScorer,
    offsets: np.ndarray,
    items: np.ndarray,
    cutoffs: Sequence[int] = (5, 10, 20),
    batch_size: int = 256,
    exclude_seen: bool = False,
    device: str | torch.device | None = None,
) -> dict:
    """The ``next_item`` protocol of seed 003 section 4.

    Test sessions come as CSR arrays (``offsets`` int64 (S+1,), ``items`` int64 (E,), each
    session's events in time order).  Events are fed one by one; after every event except a
    session's last, the following item is ranked over all ``scorer.n_items`` items with
    conservative ties (:func:`ranks_conservative`), and each (prefix, next item) pair counts once.
    Sessions with fewer than two events give no pair and are skipped.

    Sessions run session-parallel: ``batch_size`` rows each hold one session; when a row's
    session ends the next unstarted session takes the row with ``reset=True``; when none is left
    the row is dropped and ``scorer.select`` shrinks the state.

    Args:
        exclude_seen: if True, items already seen earlier in the session (including the current
            one) get score ``-inf`` before ranking, i.e. the recommender may not re-recommend
            them; a target that repeats a seen item then ranks last (rank = n_items).
        device: where the ``items``/``reset`` tensors handed to ``scorer.step`` live (CPU by
            default); ranks are computed on the scores' device.

    Returns:
        ``RankAccumulator(cutoffs).result()`` (``recall@K``, ``mrr@K``, ``ndcg@K``, ``hit@K``,
        ``n`` = number of pairs) plus ``"protocol": "next_item"`` and ``"n_sessions"`` (sessions
        that contributed at least one pair).
    """
    n_items = int(scorer.n_items)
    offsets = np.asarray(offsets, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    validate_csr(offsets, items, n_items)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    dev = torch.device(device) if device is not None else torch.device("cpu")

    lengths = np.diff(offsets)  # (S,)
    queue = np.flatnonzero(lengths >= 2)  # sessions that give at least one pair
    acc = RankAccumulator(cutoffs)
    result_extra = {"protocol": "next_item", "n_sessions": int(queue.size)}
    if queue.size == 0:
        return {**acc.result(), **result_extra}

    b = min(batch_size, int(queue.size))
    row_sess = queue[:b].copy()  # (B,) session id per row
    next_q = b
    row_pos = np.zeros(b, dtype=np.int64)  # position of the current event within its session
    reset = np.ones(b, dtype=bool)
    state = scorer.init_state(b)
    seen = torch.zeros((b, n_items), dtype=torch.bool, device=dev) if exclude_seen else None

    while row_sess.size:
        idx = offsets[row_sess] + row_pos  # (B,) flat event index
        cur = torch.from_numpy(items[idx]).to(dev)
        nxt = torch.from_numpy(items[idx + 1]).to(dev)
        reset_t = torch.from_numpy(reset).to(dev)
        scores, state = scorer.step(state, cur, reset_t)
        if scores.shape != (row_sess.size, n_items):
            raise ValueError(
                f"scorer.step returned scores of shape {tuple(scores.shape)}, expected "
                f"({row_sess.size}, {n_items})"
            )
        if seen is not None:
            seen[reset_t] = False
            seen[torch.arange(row_sess.size, device=dev), cur] = True
            scores = scores.masked_fill(seen.to(scores.device), float("-inf"))
        acc.add(ranks_conservative(scores, nxt))

        row_pos += 1
        reset[:] = False
        finished = row_pos + 1 >= lengths[row_sess]  # the row now sits on its session's last event
        if not finished.any():
            continue
        fin_rows = np.flatnonzero(finished)
        n_new = min(fin_rows.size, int(queue.size) - next_q)
        refill = fin_rows[:n_new]
        if n_new:
            row_sess[refill] = queue[next_q : next_q + n_new]
            next_q += n_new
            row_pos[refill] = 0
            reset[refill] = True
        drop = fin_rows[n_new:]
        if drop.size:
            keep = np.ones(row_sess.size, dtype=bool)
            keep[drop] = False
            keep_idx = np.flatnonzero(keep)
            row_sess, row_pos, reset = row_sess[keep_idx], row_pos[keep_idx], reset[keep_idx]
            if keep_idx.size:
                keep_t = torch.from_numpy(keep_idx).to(dev)
                state = scorer.select(state, keep_t)
                if seen is not None:
                    seen = seen[keep_t]
    return {**acc.result(), **result_extra}


def evaluate_future_window(
    topk_fn: Callable[[np.ndarray], np.ndarray | torch.Tensor],
    input_items_per_user: Sequence[np.ndarray],
    output_items_per_user: Sequence[np.ndarray],
    ks: Sequence[int],
    n_items: int,
    batch_size: int = 1024,
) -> dict:
    """The ``future_window`` protocol of seed 000 (section 2, split of section 3.1).

    ``topk_fn(users)`` gets user row indices (U_b,) int64 and returns scores over all items,
    shape (U_b, n_items).  Items of each user's input window are excluded (score ``-inf``), the
    remaining items are sorted by descending score (ties by lower item index, stable) and the top
    K is compared with the output window.  Users whose output window is empty are left out of C.

    Returns ``precision@K`` (eq. 1), ``pcc@K`` (eq. 2, normalised by ``n_items`` = P, the total
    number of products), ``coverage@K`` (catalogue coverage), ``n_users`` and
    ``"protocol": "future_window"``.
    """
    ks, users = _future_window_args(input_items_per_user, output_items_per_user, ks)
    kmax = min(ks[-1], n_items)
    recs: list[np.ndarray] = []
    for start in range(0, users.size, batch_size):
        ub = users[start : start + batch_size]
        s = topk_fn(ub)
        s = s.detach().to("cpu").numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
        if s.shape != (ub.size, n_items):
            raise ValueError(f"topk_fn returned shape {s.shape}, expected ({ub.size}, {n_items})")
        s = s.astype(np.float64, copy=True)
        if np.isnan(s).any():
            raise ValueError("topk_fn returned NaN scores")
        for r, u in enumerate(ub):
            inp = np.asarray(input_items_per_user[u], dtype=np.int64)
            if inp.size:
                s[r, inp] = -np.inf
        order = np.argsort(-s, axis=1, kind="stable")[:, :kmax]  # (U_b, kmax)
        for r, u in enumerate(ub):
            n_allowed = n_items - np.unique(np.asarray(input_items_per_user[u])).size
            recs.append(order[r, : max(0, min(kmax, n_allowed))])
    return _future_window_result(recs, output_items_per_user, users, ks, n_items)


def _future_window_args(
    input_items_per_user: Sequence[np.ndarray],
    output_items_per_user: Sequence[np.ndarray],
    ks: Sequence[int],
) -> tuple[list[int], np.ndarray]:
    """Sorted cut-offs and the users with a non-empty output window (checked)."""
    if len(input_items_per_user) != len(output_items_per_user):
        raise ValueError(
            f"input_items_per_user has {len(input_items_per_user)} users but "
            f"output_items_per_user has {len(output_items_per_user)}"
        )
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    users = np.array(
        [u for u, out in enumerate(output_items_per_user) if len(out) > 0], dtype=np.int64
    )
    if users.size == 0:
        raise ValueError("no user has items in the output window")
    return ks, users


def _future_window_result(
    recs: list[np.ndarray],
    output_items_per_user: Sequence[np.ndarray],
    users: np.ndarray,
    ks: list[int],
    n_items: int,
) -> dict:
    relevant = [np.asarray(output_items_per_user[u]) for u in users]
    out: dict[str, Any] = {}
    for k in ks:
        out[f"precision@{k}"] = precision_at_k(recs, relevant, k)
        out[f"pcc@{k}"] = pcc_at_k(recs, relevant, k, n_items)
        out[f"coverage@{k}"] = catalog_coverage(recs, k, n_items)
    out["n_users"] = int(users.size)
    out["protocol"] = "future_window"
    return out


def evaluate_future_window_topk(
    hidden_fn: Callable[[np.ndarray], torch.Tensor],
    item_weight: torch.Tensor,
    item_bias: torch.Tensor | None,
    input_items_per_user: Sequence[np.ndarray],
    output_items_per_user: Sequence[np.ndarray],
    ks: Sequence[int],
    batch_size: int = 1024,
    backend: str | None = None,
) -> dict:
    """:func:`evaluate_future_window` for a model whose item scores are
    ``hidden @ item_weight.T + item_bias`` (the daily model's eq. 3 logits, before the
    monotone sigmoid), without the ``(U_b, n_items)`` score matrix.

    ``hidden_fn(users)`` gets user row indices (U_b,) int64 and returns ``(U_b, H)``;
    ``item_weight`` is ``(n_items, H)``, ``item_bias`` ``(n_items,)`` or None. The top-K with
    each user's input-window items excluded is the fused ``rayrec.ops_kernels.topk_scores``
    (``backend`` or ``RAYREC_KERNELS``). Same metrics and result keys as
    :func:`evaluate_future_window`; the one difference is the order among exactly tied
    scores (arbitrary here, lower index first there).
    """
    ks, users = _future_window_args(input_items_per_user, output_items_per_user, ks)
    n_items = int(item_weight.shape[0])
    kmax = min(ks[-1], n_items)
    recs: list[np.ndarray] = []
    for start in range(0, users.size, batch_size):
        ub = users[start : start + batch_size]
        h = hidden_fn(ub)
        if h.dim() != 2 or h.shape[0] != ub.size:
            raise ValueError(f"hidden_fn returned shape {tuple(h.shape)}, expected ({ub.size}, H)")
        if not bool(torch.isfinite(h).all()):
            raise ValueError("hidden_fn returned non-finite values")  # the dense path rejects NaN too
        excl = pad_exclusions([np.asarray(input_items_per_user[u]).tolist() for u in ub])
        _, idx = topk_scores(h, item_weight, kmax, item_bias, excl, backend=backend)  # (U_b, kmax)
        for row in idx.cpu().numpy():
            recs.append(row[row >= 0])  # -1: fewer than kmax items left after the exclusions
    return _future_window_result(recs, output_items_per_user, users, ks, n_items)


def evaluate_sampled_candidates(
    score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray | torch.Tensor],
    targets: np.ndarray,
    n_negatives: int,
    popularity: np.ndarray,
    gamma: float,
    rng: np.random.Generator,
    cutoffs: Sequence[int] = (5, 10, 20),
) -> dict:
    """The ``sampled_candidates`` protocol of seed 002 section 5.

    For each test case t with target item ``targets[t]``, ``n_negatives`` negatives are drawn
    (with replacement) from ``p(i) ∝ popularity[i] ** gamma`` with the target excluded
    (gamma = 1: empirical distribution; 0: uniform; 0.75: the training smoothing).
    ``score_fn(cases, candidates)`` gets case indices (T,) and candidates (T, 1 + n_negatives),
    column 0 being the target, and returns scores of the same shape.  The target's conservative
    rank among its candidates feeds Recall/MRR/NDCG@K.

    Returns the :class:`RankAccumulator` result plus ``"protocol": "sampled_candidates"``,
    ``"n_negatives"`` and ``"gamma"``.
    """
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    pop = np.asarray(popularity, dtype=np.float64).reshape(-1)
    n_items = pop.size
    if n_negatives < 1:
        raise ValueError(f"n_negatives must be positive, got {n_negatives}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if (pop < 0).any() or not np.isfinite(pop).all():
        raise ValueError("popularity must be finite and non-negative")
    if targets.size and (targets.min() < 0 or targets.max() >= n_items):
        raise ValueError(f"targets out of range [0, {n_items})")
    w = np.power(pop, gamma)  # 0 ** 0 == 1: gamma 0 is uniform over all items
    if w.sum() <= 0:
        raise ValueError("popularity ** gamma sums to zero; cannot sample negatives")
    p = w / w.sum()
    neg = rng.choice(n_items, size=(targets.size, n_negatives), p=p)  # (T, n_neg)
    clash = neg == targets[:, None]
    while clash.any():
        rows = np.flatnonzero(clash.any(axis=1))
        for r in rows:
            pr = p.copy()
            pr[targets[r]] = 0.0
            if pr.sum() <= 0:
                raise ValueError(
                    f"no negative can be drawn for target {int(targets[r])}: it holds all the "
                    "sampling mass"
                )
            pr /= pr.sum()
            bad = clash[r]
            neg[r, bad] = rng.choice(n_items, size=int(bad.sum()), p=pr)
        clash = neg == targets[:, None]
    cand = np.concatenate([targets[:, None], neg], axis=1)  # (T, 1 + n_neg)
    s = score_fn(np.arange(targets.size, dtype=np.int64), cand)
    s = s if isinstance(s, torch.Tensor) else torch.as_tensor(np.asarray(s))
    if tuple(s.shape) != cand.shape:
        raise ValueError(f"score_fn returned shape {tuple(s.shape)}, expected {cand.shape}")
    acc = RankAccumulator(cutoffs)
    acc.add(ranks_conservative(s.float(), torch.zeros(targets.size, dtype=torch.long)))
    return {
        **acc.result(),
        "protocol": "sampled_candidates",
        "n_negatives": int(n_negatives),
        "gamma": float(gamma),
    }

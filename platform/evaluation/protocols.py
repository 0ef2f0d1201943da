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
from dataclasses import dataclass
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
    ranks_mean,
)

__all__ = [
    "SessionScorer",
    "validate_csr",
    "evaluate_next_item",
    "evaluate_future_window",
    "evaluate_future_window_topk",
    "evaluate_sampled_candidates",
    "history_cases",
    "draw_candidates",
    "evaluate_candidate_set",
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
    candidates: np.ndarray | torch.Tensor | None = None,
    ties: str = "conservative",
    ppl: bool = False,
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
        candidates: (n_items,) bool: rank the target among these items only (e.g. the cold
            items of an ``item_holdout`` split, seed 001 Table 7); a pair whose target is not a
            candidate is left out and counted (``n_skipped_targets``).
        ties: ``conservative`` (a tie counts against the target, seed 003) or ``mean`` (the
            mean position among the tied items, :func:`ranks_mean`).
        ppl: also report ``ppl``, the perplexity ``exp(mean(-log softmax(scores)[target]))``
            over the ranked items (models whose scores are softmax logits).

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
    # a scorer bound to these arrays' per-event context (time, event type, value) is handed
    # the flat index of each row's current event as ``positions`` (seed 001 section 2.2)
    positions = bool(getattr(scorer, "uses_event_positions", False))
    if ties not in ("conservative", "mean"):
        raise ValueError(f"ties must be 'conservative' or 'mean', got {ties!r}")
    rank_fn = ranks_mean if ties == "mean" else ranks_conservative
    cand = None
    if candidates is not None:
        cand = torch.as_tensor(np.asarray(candidates), dtype=torch.bool).reshape(-1)
        if cand.numel() != n_items:
            raise ValueError(f"candidates must be an ({n_items},) bool mask, got {cand.numel()} entries")
        if not bool(cand.any()):
            raise ValueError("candidates selects no item")
    skipped, nll, n_nll = 0, 0.0, 0

    lengths = np.diff(offsets)  # (S,)
    queue = np.flatnonzero(lengths >= 2)  # sessions that give at least one pair
    acc = RankAccumulator(cutoffs, fractional=ties == "mean")
    result_extra: dict[str, Any] = {"protocol": "next_item", "n_sessions": int(queue.size)}

    def extras() -> dict[str, Any]:
        out = dict(result_extra)
        if ties != "conservative":
            out["ties"] = ties
        if cand is not None:
            out.update(n_candidates=int(cand.sum()), n_skipped_targets=skipped)
        if ppl:
            out["ppl"] = float(np.exp(nll / n_nll)) if n_nll else float("nan")
        return out

    if queue.size == 0:
        return {**acc.result(), **extras()}

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
        if positions:  # context models read the events' time / type / value by flat index
            scores, state = scorer.step(state, cur, reset_t, positions=torch.from_numpy(idx))
        else:
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
        tgt = nxt
        if cand is not None:
            c = cand.to(scores.device)
            scores = scores.masked_fill(~c, float("-inf"))  # rank among the candidates only
            ok = c[nxt.to(scores.device)]
            if not bool(ok.all()):
                skipped += int((~ok).sum())
                scores, tgt = scores[ok], nxt[ok.to(nxt.device)]
        if tgt.numel():
            acc.add(rank_fn(scores, tgt))
            if ppl:
                lp = torch.log_softmax(scores.double(), 1).gather(1, tgt.to(scores.device).unsqueeze(1))
                nll -= float(lp.sum())
                n_nll += int(tgt.numel())

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
    return {**acc.result(), **extras()}


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


# ---------------------------------------------------------------------------- multi-positive
# sampled candidates (seed 002 sections 5.1, 5.3): a held-out user's later items against
# negatives drawn from P_gamma (eq. 5)


@dataclass
class HistoryCases:
    """Held-out users as (history, positives) cases with what was left out, counted."""

    users: list[Any]
    histories: list[np.ndarray]
    """Each case's prepared history (oldest first, distinct, non-empty)."""
    positives: list[np.ndarray]
    """Targets not in the history (section 5.1: only new interactions), distinct."""
    counts: dict[str, int]


def history_cases(input_offsets: np.ndarray, input_items: np.ndarray, target_offsets: np.ndarray,
                  target_items: np.ndarray, max_len: int, known: np.ndarray | None = None,
                  users: Sequence[Any] | None = None) -> HistoryCases:
    """Cases of users whose input sequence ``u`` and targets ``u`` are CSR rows of the two
    arrays.  ``known`` (N,) bool: items with a trained vector; history items without one are
    dropped (``unknown_items``), targets without one excluded (``targets_without_vector``).
    Targets already in the history are dropped (``repeat_targets``); a user left with an empty
    history (``empty_histories``) or no positive (``users_without_positive``) is skipped."""
    from rayrec.models.attention_cf import prepare_history

    n_users = input_offsets.size - 1
    if target_offsets.size - 1 != n_users:
        raise ValueError(f"{n_users} input rows but {target_offsets.size - 1} target rows")
    c = dict.fromkeys(("users", "unknown_items", "targets", "targets_without_vector", "repeat_targets",
                       "empty_histories", "users_without_positive", "cases"), 0)
    out = HistoryCases([], [], [], c)
    for u in range(n_users):
        c["users"] += 1
        h = np.asarray(input_items[input_offsets[u]:input_offsets[u + 1]], dtype=np.int64)
        t = np.asarray(target_items[target_offsets[u]:target_offsets[u + 1]], dtype=np.int64)
        c["targets"] += int(t.size)
        if known is not None:
            c["unknown_items"] += int((~known[h]).sum())
            h = h[known[h]]
            c["targets_without_vector"] += int((~known[t]).sum())
            t = t[known[t]]
        if h.size == 0:
            c["empty_histories"] += 1
            continue
        hist = prepare_history(h, max_len)
        rep = np.isin(t, h)
        c["repeat_targets"] += int(rep.sum())
        pos = np.unique(t[~rep])
        if pos.size == 0:
            c["users_without_positive"] += 1
            continue
        out.users.append(users[u] if users is not None else u)
        out.histories.append(hist)
        out.positives.append(pos)
        c["cases"] += 1
    return out


@dataclass
class CandidateSet:
    """Candidates drawn once per (gamma, n_negatives, seed) and shared by every model:
    ``candidates`` (T, P + n) long, row t = its positives (padded -1 to the widest P) then
    ``n_negatives`` negatives from P_gamma excluding its positives and history."""

    cases: HistoryCases
    candidates: np.ndarray
    n_pos: np.ndarray
    width_pos: int
    gamma: float
    n_negatives: int
    seed: int


def draw_candidates(cases: HistoryCases, popularity: np.ndarray, gamma: float, n_negatives: int,
                    seed: int) -> CandidateSet:
    """Negatives for every case from ``P_gamma(i) ∝ popularity[i]^gamma`` (eq. 5; gamma 0 is
    uniform, 1 the empirical distribution), with the case's positives and history redrawn."""
    from rayrec.models.samplers import PopularitySampler, sample_excluding

    if n_negatives < 1:
        raise ValueError(f"n_negatives must be positive, got {n_negatives}")
    sampler = PopularitySampler(popularity, gamma, store_size=max(1, 4 * n_negatives * len(cases.positives)),
                                generator=torch.Generator().manual_seed(int(seed)))
    excl = [np.concatenate([p, h]) for p, h in zip(cases.positives, cases.histories)]
    neg = sample_excluding(sampler, n_negatives, excl).numpy() if excl else np.zeros((0, n_negatives), np.int64)
    n_pos = np.array([p.size for p in cases.positives], dtype=np.int64)
    width = int(n_pos.max()) if n_pos.size else 1
    pos = np.full((len(cases.positives), width), -1, dtype=np.int64)
    for i, p in enumerate(cases.positives):
        pos[i, : p.size] = p
    return CandidateSet(cases, np.concatenate([pos, neg], 1), n_pos, width, float(gamma), int(n_negatives), int(seed))


def evaluate_candidate_set(score_fn: Callable[[list[np.ndarray], np.ndarray], np.ndarray | torch.Tensor],
                           cs: CandidateSet, ks: Sequence[int] = (5, 10, 20)) -> dict[str, Any]:
    """``score_fn(histories, candidates (T, C)) -> (T, C)`` scores (padding -1 is ignored).

    A positive's rank is the number of negatives scoring at least as high (conservative ties)
    plus the positives scoring strictly higher.  NDCG over the whole list (section 5.3:
    ``sum_pos 1/log2(2 + rank) / sum_{r < |P|} 1/log2(2 + r)``), Recall@K = positives ranked
    in the top K / |P| (Fig. 3), both averaged over the cases."""
    cand = cs.candidates
    s = score_fn(cs.cases.histories, cand)
    s = s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
    if s.shape != cand.shape:
        raise ValueError(f"score_fn returned shape {s.shape}, expected {cand.shape}")
    s = s.astype(np.float64)
    if not np.isfinite(s[cand >= 0]).all():
        raise ValueError("score_fn returned non-finite scores for real candidates")
    w = cs.width_pos
    ps, ns = s[:, :w], s[:, w:]  # (T, W), (T, n)
    pvalid = cand[:, :w] >= 0
    ps_m = np.where(pvalid, ps, -np.inf)
    rank = (ns[:, None, :] >= ps[:, :, None]).sum(-1) + (ps_m[:, None, :] > ps[:, :, None]).sum(-1)  # (T, W)
    disc = 1.0 / np.log2(2.0 + rank)
    dcg = np.where(pvalid, disc, 0.0).sum(1)
    idcg = np.array([(1.0 / np.log2(2.0 + np.arange(p))).sum() for p in cs.n_pos])
    out: dict[str, Any] = {"protocol": "sampled_candidates", "gamma": cs.gamma, "n_negatives": cs.n_negatives,
                           "seed": cs.seed, "n": int(cand.shape[0]),
                           "ndcg": float((dcg / idcg).mean()) if cand.shape[0] else float("nan")}
    for k in ks:
        hits = np.where(pvalid, rank < k, False).sum(1)
        out[f"recall@{k}"] = float((hits / cs.n_pos).mean()) if cand.shape[0] else float("nan")
    out["counts"] = dict(cs.cases.counts)
    return out

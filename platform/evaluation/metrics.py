"""Ranking and set metrics for the evaluation protocols (pure numpy / torch, no Ray).

Two families:

* rank metrics for the ``next_item`` protocol of seed 003 (section 4): every test case has one
  target item whose 1-based rank among all items is turned into Recall@K (the share of cases with
  the target in the top K), MRR@K (reciprocal rank, 0 when the rank is above K), NDCG@K and
  Hit@K.  Ranks are *conservative*: any other item scoring at least as high as the target is
  counted above it, so a model that scores everything equally gets the worst rank, never the best.
* set metrics for the daily recommender of seed 000 (section 2): Precision@K (eq. 1), products
  converted coverage PCC@K (eq. 2), plus catalogue coverage and perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "ranks_conservative",
    "RankAccumulator",
    "precision_at_k",
    "pcc_at_k",
    "catalog_coverage",
    "perplexity",
    "ranks_mean",
]


def ranks_conservative(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target item, counting exact ties against the target.

    ``rank_b = 1 + #{j != t_b : scores[b, j] >= scores[b, t_b]}`` (seed 003 section 4: items are
    ordered by descending score and the target's position is its rank; ties are resolved
    pessimistically so that constant or saturated scores cannot look good).

    Args:
        scores: (B, N) float scores over all N items.
        targets: (B,) long item indices in ``[0, N)``.

    Returns:
        (B,) long ranks in ``[1, N]`` on the scores' device.

    Raises:
        ValueError: on wrong shapes, out-of-range targets or NaN scores.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (B, N), got shape {tuple(scores.shape)}")
    if targets.dim() != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(
            f"targets must be 1-D with B={scores.shape[0]} entries, got shape "
            f"{tuple(targets.shape)}"
        )
    n = scores.shape[1]
    targets = targets.to(device=scores.device, dtype=torch.long)
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n):
        raise ValueError(
            f"targets out of range [0, {n}): min {int(targets.min())}, max {int(targets.max())}"
        )
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; cannot rank")
    target_scores = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    # The target itself satisfies s_t >= s_t, so the count already includes the "1 +".
    return (scores >= target_scores).sum(dim=1).to(torch.long)


def ranks_mean(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target with exact ties resolved by their mean position:
    ``1 + #{j : s_j > s_t} + (#{j != t : s_j == s_t}) / 2`` (float64; the expected rank of a
    random order among the tied items, seed 001's cold-start evaluation).  Checks as
    :func:`ranks_conservative`."""
    worst = ranks_conservative(scores, targets)  # validates; 1 + greater + ties
    target_scores = scores.gather(1, targets.to(device=scores.device, dtype=torch.long).unsqueeze(1))
    ties = (scores == target_scores).sum(dim=1) - 1  # (B,), the target excluded
    return worst.to(torch.float64) - ties.to(torch.float64) / 2.0


class RankAccumulator:
    """Streams 1-based ranks and reports Recall/MRR/NDCG/Hit at several cut-offs.

    Only running sums are kept, so memory does not grow with the number of test cases.
    For one target per case: ``recall@K == hit@K == mean(rank <= K)``,
    ``mrr@K = mean(1/rank if rank <= K else 0)`` (seed 003 section 4) and
    ``ndcg@K = mean(1/log2(rank + 1) if rank <= K else 0)`` (the ideal DCG of one relevant item
    is 1).

    An empty accumulator reports ``n = 0`` and NaN for every metric (a mean over no cases is
    undefined; NaN makes the omission visible instead of silently reporting 0).
    """

    def __init__(self, cutoffs: Sequence[int] = (5, 10, 20), fractional: bool = False) -> None:
        """``fractional``: ranks may be non-integer (mean ties, :func:`ranks_mean`)."""
        self.fractional = bool(fractional)
        cut = tuple(int(k) for k in cutoffs)
        if not cut:
            raise ValueError("cutoffs must not be empty")
        if any(k < 1 for k in cut):
            raise ValueError(f"cutoffs must be positive integers, got {cutoffs!r}")
        self.cutoffs: tuple[int, ...] = tuple(sorted(set(cut)))
        self.n = 0
        self._hits = {k: 0 for k in self.cutoffs}
        self._rr = {k: 0.0 for k in self.cutoffs}
        self._dcg = {k: 0.0 for k in self.cutoffs}

    def add(self, ranks: torch.Tensor | np.ndarray | Iterable[int]) -> None:
        """Add a batch of 1-based ranks (tensor, array or iterable of ints)."""
        if isinstance(ranks, torch.Tensor):
            r = ranks.detach().to("cpu").numpy()
        else:
            r = np.asarray(list(ranks) if not isinstance(ranks, np.ndarray) else ranks)
        r = r.reshape(-1)
        if r.size == 0:
            return
        if not np.issubdtype(r.dtype, np.integer):
            if not np.all(np.isfinite(r)) or (not self.fractional and np.any(r != np.floor(r))):
                raise ValueError("ranks must be integers")
        r = r.astype(np.float64) if self.fractional else r.astype(np.int64)
        if float(r.min()) < 1:
            raise ValueError(f"ranks are 1-based; got a rank of {r.min()}")
        rf = r.astype(np.float64)
        for k in self.cutoffs:
            inside = r <= k
            self._hits[k] += int(inside.sum())
            self._rr[k] += float((1.0 / rf[inside]).sum())
            self._dcg[k] += float((1.0 / np.log2(rf[inside] + 1.0)).sum())
        self.n += int(r.size)

    def result(self) -> dict[str, float]:
        """``{"recall@K", "mrr@K", "ndcg@K", "hit@K"}`` for each cut-off, plus ``"n"``."""
        out: dict[str, float] = {}
        for k in self.cutoffs:
            if self.n == 0:
                recall = mrr = ndcg = math.nan
            else:
                recall = self._hits[k] / self.n
                mrr = self._rr[k] / self.n
                ndcg = self._dcg[k] / self.n
            out[f"recall@{k}"] = recall
            out[f"mrr@{k}"] = mrr
            out[f"ndcg@{k}"] = ndcg
            out[f"hit@{k}"] = recall
        out["n"] = self.n
        return out


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _top(rec: np.ndarray | Sequence[int], k: int) -> set[int]:
    arr = np.asarray(rec).reshape(-1)
    return {int(x) for x in arr[:k]}


def precision_at_k(
    recommended: Sequence[np.ndarray], relevant: Sequence[set | np.ndarray], k: int
) -> float:
    """Precision@K, seed 000 eq. (1): ``(1/C) sum_c |Rec_c ∩ T_c| / K``.

    Args:
        recommended: per customer, item indices ordered best first (only the first K count;
            a list shorter than K still divides by K, as in the equation).
        relevant: per customer, the items consumed in the evaluation period (``T_c``).
        k: the cut-off K.

    C is the number of customers passed in (callers decide whether customers without future
    purchases take part; :func:`rayrec.platform.evaluation.protocols.evaluate_future_window`
    leaves them out).
    """
    k = _check_k(k)
    if len(recommended) != len(relevant):
        raise ValueError(
            f"recommended has {len(recommended)} customers but relevant has {len(relevant)}"
        )
    if len(recommended) == 0:
        raise ValueError("precision_at_k needs at least one customer")
    total = 0.0
    for rec, rel in zip(recommended, relevant):
        rel_set = {int(x) for x in rel}
        total += len(_top(rec, k) & rel_set) / k
    return total / len(recommended)


def pcc_at_k(
    recommended: Sequence[np.ndarray],
    relevant: Sequence[set | np.ndarray],
    k: int,
    n_products: int,
) -> float:
    """Products converted coverage PCC@K, seed 000 eq. (2).

    ``PCC@K = (1/P) |∪_c (Rec_c ∩ T_c)|`` where ``Rec_c`` is customer c's top K, ``T_c`` the
    items c consumed in the evaluation period, and the normalisation ``P = n_products`` is the
    *total number of products* (the paper's "P is total number of products"), not the number of
    purchased products.  So PCC is the share of the whole catalogue that was recommended in
    someone's top K and then purchased by that same customer.
    """
    k = _check_k(k)
    if n_products < 1:
        raise ValueError(f"n_products must be positive, got {n_products}")
    if len(recommended) != len(relevant):
        raise ValueError(
            f"recommended has {len(recommended)} customers but relevant has {len(relevant)}"
        )
    converted: set[int] = set()
    for rec, rel in zip(recommended, relevant):
        converted |= _top(rec, k) & {int(x) for x in rel}
    return len(converted) / n_products


def catalog_coverage(recommended: Sequence[np.ndarray], k: int, n_items: int) -> float:
    """Share of the catalogue that appears in at least one customer's top K:
    ``|∪_c Rec_c| / n_items`` (the purchase-independent counterpart of PCC@K)."""
    k = _check_k(k)
    if n_items < 1:
        raise ValueError(f"n_items must be positive, got {n_items}")
    seen: set[int] = set()
    for rec in recommended:
        seen |= _top(rec, k)
    return len(seen) / n_items


def perplexity(target_log_probs: torch.Tensor | np.ndarray | Sequence[float]) -> float:
    """``exp(-mean(log p(target)))`` with natural-log probabilities of the targets.

    A uniform model over N items has perplexity N; a perfect model has perplexity 1.
    """
    if isinstance(target_log_probs, torch.Tensor):
        lp = target_log_probs.detach().to("cpu", torch.float64).numpy()
    else:
        lp = np.asarray(target_log_probs, dtype=np.float64)
    lp = lp.reshape(-1)
    if lp.size == 0:
        raise ValueError("perplexity needs at least one target log-probability")
    if np.isnan(lp).any():
        raise ValueError("target_log_probs contain NaN")
    if (lp > 1e-9).any():
        raise ValueError(
            f"target_log_probs must be log-probabilities (<= 0), max is {float(lp.max())}"
        )
    return float(np.exp(-lp.mean()))

"""Popularity-based negative sampling (Top-k gains paper, section 3: additional samples).

Seed 003 section 3.1.2 argues that negatives should be sampled in proportion to popularity
and uses the other targets of the mini-batch for that. The authors' follow-up adds S extra
negatives per mini-batch, shared by all its rows and drawn from ``count^alpha`` (alpha = 0:
uniform, alpha = 1: popularity). Drawing them one mini-batch at a time is slow, so a large
*store* of samples is generated in one vectorised call (inverse-CDF: ``searchsorted`` of
uniform numbers in the cumulative distribution) and served in ``n_sample`` slices;
the store is regenerated when exhausted.  :class:`PopularitySampler` draws by inverse CDF
(``O(log N)`` per draw); :class:`AliasSampler` by Walker's alias method (``O(1)`` per draw
after an ``O(N)`` table build): ``loss.sampler: cdf | alias``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["AliasSampler", "PopularitySampler", "logq_tables", "make_sampler", "sample_excluding"]


class PopularitySampler:
    """Draws item indices i.i.d. with probability ``counts[i]^alpha / sum_j counts[j]^alpha``.

    ``counts`` (N,) non-negative item counts (e.g. training-set occurrences); ``alpha`` in
    [0, 1]; ``store_size``: number of draws generated per refill (rounded down to whole
    ``n_sample`` slices when serving slices); ``generator``: a seeded ``torch.Generator``
    makes the draws reproducible. ``0^0`` is taken as 1, so alpha = 0 is uniform over
    all N items, zero counts included.
    """

    def __init__(
        self,
        counts: np.ndarray | torch.Tensor,
        alpha: float,
        store_size: int = 10_000_000,
        generator: torch.Generator | None = None,
    ) -> None:
        c = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
        if c.dim() != 1 or c.numel() == 0:
            raise ValueError(f"counts must be a non-empty 1-D array, got shape {tuple(c.shape)}")
        if bool((c < 0).any()) or not bool(torch.isfinite(c).all()):
            raise ValueError("counts must be finite and >= 0")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if store_size <= 0:
            raise ValueError(f"store_size must be positive, got {store_size}")
        w = torch.ones_like(c) if alpha == 0.0 else c.pow(alpha)  # (N,)
        total = float(w.sum())
        if total <= 0.0:
            raise ValueError("counts^alpha sums to 0: no item can be sampled")
        self.alpha = float(alpha)
        self.n_items = int(c.numel())
        self.prob = w / total  # (N,) float64, sampling probability of each item
        cdf = torch.cumsum(self.prob, 0)
        cdf[-1] = 1.0
        self._cdf = cdf.to(torch.float64)
        self.store_size = int(store_size)
        self.generator = generator
        self._store = torch.empty(0, dtype=torch.long)
        self._ptr = 0
        self.refills = 0

    @property
    def log_prob(self) -> torch.Tensor:
        """log of :attr:`prob` as float32 (for the logQ correction); -inf for zero-prob items."""
        return self.prob.log().to(torch.float32)

    def _draw(self, n: int) -> torch.Tensor:
        """``n`` i.i.d. draws (n,) long: inverse CDF."""
        u = torch.rand(n, dtype=torch.float64, generator=self.generator)  # (n,)
        idx = torch.searchsorted(self._cdf, u, right=True)  # (n,): first cdf > u
        return idx.clamp_(max=self.n_items - 1)

    def _refill(self, min_size: int) -> None:
        self._store = self._draw(max(self.store_size, min_size))
        self._ptr = 0
        self.refills += 1

    def reseed(self, generator: torch.Generator, store_size: int | None = None) -> None:
        """Start a fresh stream: the next draw refills the store (of ``store_size`` draws, or
        the configured size) from ``generator`` (a seeded epoch draws the same negatives
        whether or not the run was resumed)."""
        self.generator = generator
        if store_size is not None:
            if store_size <= 0:
                raise ValueError(f"store_size must be positive, got {store_size}")
            self.store_size = int(store_size)
        self._store = torch.empty(0, dtype=torch.long)
        self._ptr = 0

    def sample(self, n: int) -> torch.Tensor:
        """The next ``n`` draws (n,) long from the store (regenerated when it runs out)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if self._ptr + n > self._store.numel():
            self._refill(n)
        out = self._store[self._ptr : self._ptr + n]
        self._ptr += n
        return out


def _alias_tables(prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias tables (Vose's construction) for ``prob`` (N,) summing to 1: draw a slot
    ``k`` uniformly, keep it with probability ``accept[k]``, else take ``alias[k]``.  Every
    slot holds mass 1/N: a slot under 1/N is topped up from one over it."""
    n = prob.shape[0]
    q = prob.astype(np.float64) * n
    accept = np.ones(n, dtype=np.float64)
    alias = np.arange(n, dtype=np.int64)
    small = np.flatnonzero(q < 1.0).tolist()
    large = np.flatnonzero(q >= 1.0).tolist()
    while small and large:
        s, big = small.pop(), large[-1]
        accept[s], alias[s] = q[s], big
        q[big] -= 1.0 - q[s]
        if q[big] < 1.0:  # the donor is now under 1/N: it needs topping up itself
            small.append(large.pop())
    # leftovers hold 1/N up to rounding: keep them whole (zero-mass slots cannot be left over
    # while a donor remains; all mass sums to N)
    for i in small + large:
        accept[i] = 1.0 if q[i] > 0.0 else 0.0
    return accept, alias


class AliasSampler(PopularitySampler):
    """:class:`PopularitySampler`'s distribution and interface, drawn by the alias method
    (Walker 1977; the alias sampling of seed 001 section 3.1, its ref. 28): ``O(1)`` per draw
    whatever the catalog size, the table built once in ``O(N)``."""

    def __init__(self, counts, alpha: float, store_size: int = 10_000_000,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(counts, alpha, store_size, generator)
        accept, alias = _alias_tables(self.prob.numpy())
        self._accept = torch.from_numpy(accept)
        self._alias = torch.from_numpy(alias)

    def _draw(self, n: int) -> torch.Tensor:
        k = torch.randint(self.n_items, (n,), generator=self.generator)  # (n,) uniform slots
        u = torch.rand(n, dtype=torch.float64, generator=self.generator)
        return torch.where(u < self._accept[k], k, self._alias[k])


def make_sampler(kind: str, counts, alpha: float, store_size: int,
                 generator: torch.Generator | None = None) -> PopularitySampler:
    """``kind``: ``cdf`` (:class:`PopularitySampler`) or ``alias`` (:class:`AliasSampler`)."""
    if kind == "alias":
        return AliasSampler(counts, alpha, store_size, generator)
    if kind == "cdf":
        return PopularitySampler(counts, alpha, store_size, generator)
    raise ValueError(f"loss.sampler must be 'cdf' or 'alias', got {kind!r}")


def logq_tables(
    counts: np.ndarray,
    batch_size: int,
    sampler: PopularitySampler | None,
    n_sample: int,
    mode: str = "expected",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item log Q for target columns and for extra-sample columns: two (N,) float32 tables.

    The logQ correction of the sampled cross-entropy uses, for every column, the log of the
    expected number of times its item appears among the B + S sampled columns::

        Q_j = B * p_pop(j) + S * p_alpha(j)

    with ``p_pop`` the training popularity (mini-batch targets are drawn, in effect, in
    proportion to popularity, seed 003 section 3.1.2) and ``p_alpha`` the extra-sample
    distribution; ``sum_{columns} exp(s_j) / Q_j`` is then an unbiased estimate of the full
    softmax partition.  ``expected``: both tables are ``log Q``; ``official`` (the authors'
    code): ``log count`` for target columns and ``alpha * log count`` for the extra samples.
    Items that never occur get count 1 (they cannot be a target; a finite value keeps the
    arithmetic safe).
    """
    c = np.maximum(counts.astype(np.float64), 1.0)
    if mode == "official":
        alpha = sampler.alpha if sampler is not None else 1.0
        t = torch.from_numpy(np.log(c)).float()
        return t, torch.from_numpy(alpha * np.log(c)).float()
    p_pop = c / c.sum()
    q = batch_size * p_pop
    if sampler is not None and n_sample > 0:
        q = q + n_sample * sampler.prob.numpy()
    t = torch.from_numpy(np.log(q)).float()
    return t, t


def sample_excluding(sampler: PopularitySampler, n: int, exclude: list[np.ndarray | list[int]],
                     max_rounds: int = 1000) -> torch.Tensor:
    """(R, n) draws from ``sampler``, one row per entry of ``exclude``, where no row holds an
    item of its ``exclude`` set: hits are redrawn (seed 002 section 4.2: ``N_u`` and ``S_u``
    are disjoint).  A set that holds all the sampling mass is an error naming the row."""
    rows = len(exclude)
    out = sampler.sample(rows * n).view(rows, n).clone()
    prob = sampler.prob
    for r, ex in enumerate(exclude):
        ex_t = torch.as_tensor(np.unique(np.asarray(ex, dtype=np.int64)), dtype=torch.long)
        if ex_t.numel() == 0:
            continue
        if float(prob[ex_t].sum()) >= 1.0 - 1e-12:
            raise ValueError(f"row {r}: the excluded items {ex_t.tolist()[:10]} hold all the sampling "
                             "mass; no negative can be drawn")
        bad = torch.isin(out[r], ex_t)
        rounds = 0
        while bool(bad.any()):
            rounds += 1
            if rounds > max_rounds:
                raise ValueError(f"row {r}: no draw outside the excluded items after {max_rounds} rounds")
            out[r, bad] = sampler.sample(int(bad.sum()))
            bad = torch.isin(out[r], ex_t)
    return out

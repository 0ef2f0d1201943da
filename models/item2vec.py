"""item2vec: skip-gram item embeddings with negative sampling (seed 002 section 3).

Seed 002 learns its item vectors once, from the temporally ordered item sequence of every
user, "a straightforward adaptation of the skip-gram method of Mikolov et al." (section 3):
a window slides over each user's sequence, every co-occurring (item, context) pair inside it
is a positive, negatives are drawn from a smoothed popularity distribution, and the vectors
minimise

    L = - sum_i [ sum_{j in S_i} log sigma(x_i^T y_j) + sum_{j' in N_i} log(1 - sigma(x_i^T y_j')) ]

with ``x`` the input (item) table and ``y`` the context table.  The downstream models
(:mod:`rayrec.models.attention_cf`) read ``x`` frozen.

Pairs (:func:`skipgram_pairs`, pure numpy):

* one sequence per user, never a pair across two users;
* frequent items are subsampled *before* windowing (Mikolov et al. 2013, "Distributed
  representations of words and phrases", section 2.3): an event of an item of corpus
  frequency ``f`` is discarded with probability ``1 - sqrt(t / f)`` (``subsample: t``;
  ``f <= t`` is always kept; ``0`` turns subsampling off);
* ``window: w`` with ``reduced_window`` (word2vec's dynamic window): every centre position
  draws its own window ``b`` uniformly in ``1..w`` and pairs with the ``b`` positions on
  each side; without it every centre uses ``w``, so a sequence of ``L`` distinct items gives
  ``sum_i min(w, i) + min(w, L - 1 - i)`` pairs, symmetric in (centre, context);
* pairs of an item with itself (a repeated item inside the window) are dropped and counted.

Training goes through the platform's one loop (:class:`Item2VecTask`, registry kind
``embedding``): the pairs of an epoch are redrawn from the rank's generator, seeded by
(``train.seed``, epoch, rank), ``negatives`` per pair from ``count^alpha`` (the alias sampler
of :mod:`rayrec.models.samplers`), dense gradients (DDP all-reduces the two tables; DeepSpeed
is refused by the spec's ``engines``).  The loop's checkpoints hold ``x`` and ``y``; the
training job publishes them as an embedding version (``rayrec.platform.embeddings``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from rayrec.models import registry
from rayrec.models.samplers import make_sampler

__all__ = ["Item2Vec", "Item2VecConfig", "Item2VecTask", "Pairs", "build", "keep_probability",
           "pair_counts", "skipgram_pairs", "subsample"]


class Item2VecConfig(BaseModel):
    """``dim`` (d of x and y), ``window`` (w), ``reduced_window``, ``subsample`` (t, 0 = off),
    ``negatives`` per pair, drawn from ``count^alpha`` by ``sampler`` (alias | cdf)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: Literal["item2vec"] = "item2vec"
    dim: int = Field(64, ge=1)
    window: int = Field(5, ge=1)
    reduced_window: bool = True
    subsample: float = Field(1e-3, ge=0, lt=1)
    negatives: int = Field(5, ge=1)
    alpha: float = Field(0.75, ge=0, le=1)
    sampler: Literal["alias", "cdf"] = "alias"
    sample_store: int = Field(1_000_000, ge=1)


# ---------------------------------------------------------------------------- pairs (pure)


@dataclass
class Pairs:
    """(centre, context) item pairs of one draw, and what the draw left out."""

    centers: np.ndarray
    contexts: np.ndarray
    same_item_dropped: int
    """Pairs of an item with itself (a repeat inside the window), dropped."""
    events: int
    kept_events: int
    """Events before / after subsampling."""

    def __len__(self) -> int:
        return int(self.centers.size)


def keep_probability(counts: np.ndarray, t: float) -> np.ndarray:
    """(N,) probability of keeping an event of each item: ``min(1, sqrt(t / f))`` with ``f``
    the item's share of all events (Mikolov et al. 2013 section 2.3); all ones when t is 0."""
    c = np.asarray(counts, dtype=np.float64)
    if t <= 0 or c.sum() <= 0:
        return np.ones_like(c)
    f = c / c.sum()
    with np.errstate(divide="ignore"):
        return np.where(f > t, np.sqrt(t / np.maximum(f, 1e-300)), 1.0)


def subsample(offsets: np.ndarray, items: np.ndarray, keep_prob: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Drop each event with probability ``1 - keep_prob[item]`` (CSR in, CSR out)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    keep = rng.random(items.size) < keep_prob[items]
    seq = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    lens = np.bincount(seq[keep], minlength=offsets.size - 1)
    out = np.zeros(offsets.size, dtype=np.int64)
    np.cumsum(lens, out=out[1:])
    return out, items[keep]


def skipgram_pairs(offsets: np.ndarray, items: np.ndarray, window: int,
                   rng: np.random.Generator | None = None, reduced_window: bool = True,
                   keep_prob: np.ndarray | None = None) -> Pairs:
    """Skip-gram pairs of CSR sequences (sequence s: ``items[offsets[s]:offsets[s + 1]]``, one
    per user, in time order): subsampled first (``keep_prob``, see :func:`keep_probability`),
    then every centre position pairs with the positions at distance ``1..b`` on both sides of
    it within its own sequence (``b = window``, or uniform in ``1..window`` per centre with
    ``reduced_window``); same-item pairs are dropped and counted."""
    offsets = np.asarray(offsets, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if (reduced_window or keep_prob is not None) and rng is None:
        raise ValueError("a generator is needed for reduced_window or subsampling")
    events = int(items.size)
    if keep_prob is not None:
        offsets, items = subsample(offsets, items, keep_prob, rng)
    n = items.size
    seq = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    b = rng.integers(1, window + 1, size=n) if reduced_window else np.full(n, window)
    cs, xs = [], []
    for d in range(1, min(window, max(n - 1, 0)) + 1):
        i = np.arange(n - d)
        j = i + d
        same_seq = seq[i] == seq[j]
        fwd = same_seq & (b[i] >= d)  # centre i, context i + d
        bwd = same_seq & (b[j] >= d)  # centre i + d, context i
        cs += [items[i[fwd]], items[j[bwd]]]
        xs += [items[j[fwd]], items[i[bwd]]]
    c = np.concatenate(cs) if cs else np.zeros(0, dtype=np.int64)
    x = np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64)
    same = c == x
    return Pairs(c[~same], x[~same], int(same.sum()), events, int(n))


def pair_counts(offsets: np.ndarray, items: np.ndarray, n_items: int, window: int) -> np.ndarray:
    """(N,) pairs each item is the centre of under the full window (no subsampling, no
    reduced window; same-item pairs dropped): 0 means the item's vector was never trained."""
    p = skipgram_pairs(offsets, items, window, reduced_window=False)
    return np.bincount(p.centers, minlength=n_items).astype(np.int64)


# ---------------------------------------------------------------------------- model


class Item2Vec(nn.Module):
    """The two tables of SGNS: ``x`` (N, d) input vectors (what is published and used
    downstream), ``y`` (N, d) context vectors.  ``forward(centers (B,), contexts (B,),
    negatives (B, k), neg_valid (B, k) bool)`` -> the mean SGNS loss of section 3 over the
    B pairs."""

    def __init__(self, cfg: Item2VecConfig, n_items: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg, self.n_items = cfg, int(n_items)
        self.x = nn.Parameter(torch.empty(n_items, cfg.dim))
        self.y = nn.Parameter(torch.empty(n_items, cfg.dim))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # word2vec's initialisation, small and symmetric for x; y starts at a small scale too
        # (exact zeros would make the first steps of x vanish under Adam)
        self.x.uniform_(-0.5 / self.cfg.dim, 0.5 / self.cfg.dim, generator=generator)
        self.y.uniform_(-0.5 / self.cfg.dim, 0.5 / self.cfg.dim, generator=generator)

    def forward(self, centers: torch.Tensor, contexts: torch.Tensor, negatives: torch.Tensor,
                neg_valid: torch.Tensor | None = None) -> torch.Tensor:
        xi = self.x.index_select(0, centers)  # (B, d)
        pos = (xi * self.y.index_select(0, contexts)).sum(-1)  # (B,)
        yn = self.y.index_select(0, negatives.reshape(-1)).view(*negatives.shape, -1)  # (B, k, d)
        neg = torch.einsum("bd,bkd->bk", xi, yn)  # (B, k)
        neg_term = F.logsigmoid(-neg)
        if neg_valid is not None:
            neg_term = neg_term * neg_valid.to(neg_term.dtype)
        return -(F.logsigmoid(pos) + neg_term.sum(-1)).mean()


def build(cfg: Item2VecConfig, n_items: int) -> Item2Vec:
    return Item2Vec(cfg, n_items)


class Item2VecTask:
    """SGNS on the loop: ``env.train`` holds one CSR sequence per user of this rank
    (``offsets``, ``items``); ``env.train_counts`` the global event counts (subsampling and
    the negatives' ``count^alpha``).  Every epoch draws this rank's pairs afresh from the
    loop's generator (seeded by (seed, epoch, rank)) and splits them into the fixed number of
    steps :meth:`num_batches` gave, so every drawn pair is used exactly once."""

    parallelism = "data"

    def __init__(self, job: Any) -> None:
        self.cfg: Item2VecConfig = job.model
        self._n_batches = 0
        self._last: dict[str, int] = {}

    def build(self, env: Any, generator: torch.Generator) -> nn.Module:
        self.device = env.device
        counts = np.asarray(env.train_counts, dtype=np.float64)
        self.keep = keep_probability(counts, self.cfg.subsample) if self.cfg.subsample > 0 else None
        self.sampler = make_sampler(self.cfg.sampler, counts, self.cfg.alpha, self.cfg.sample_store,
                                    torch.Generator().manual_seed(env.seed))
        return Item2Vec(self.cfg, env.n_items, generator)

    def _pairs(self, env: Any, rng: np.random.Generator) -> Pairs:
        return skipgram_pairs(env.train.offsets, env.train.items, self.cfg.window, rng,
                              self.cfg.reduced_window, self.keep)

    def param_groups(self, module: nn.Module, lr: float) -> list[dict[str, Any]]:
        return [{"params": list(module.parameters())}]

    def num_batches(self, env: Any, batch_size: int) -> int:
        # the pair count varies a little per epoch (subsampling, reduced window): the count of
        # one draw fixes the steps; each epoch's pairs are split evenly over them
        n = len(self._pairs(env, np.random.default_rng([env.seed, 0, 7])))
        self._n_batches = math.ceil(n / batch_size)
        return self._n_batches

    def batches(self, env: Any, module: nn.Module, epoch: int, batch_size: int,
                rng: np.random.Generator) -> Iterator[Any]:
        p = self._pairs(env, rng)
        self._last = {"pairs": len(p), "same_item_pairs_dropped": p.same_item_dropped,
                      "events": p.events, "kept_events": p.kept_events}
        if len(p) == 0 or self._n_batches == 0:
            return
        self.sampler.reseed(torch.Generator().manual_seed(int(rng.integers(2**62))))
        perm = rng.permutation(len(p))
        for chunk in np.array_split(perm, min(self._n_batches, len(p))):
            c = torch.from_numpy(p.centers[chunk])
            x = torch.from_numpy(p.contexts[chunk])
            neg = self.sampler.sample(chunk.size * self.cfg.negatives).view(chunk.size, self.cfg.negatives)
            valid = neg != x[:, None]  # a negative equal to the context is no negative (word2vec)
            yield tuple(t.to(self.device) for t in (c, x, neg, valid))

    def loss(self, forward: Callable[..., Any], batch: Any, pad: bool = False) -> tuple[torch.Tensor, int]:
        return forward(*batch), int(batch[0].numel())

    def evaluate(self, env: Any, module: nn.Module, ks: Sequence[int], batch_size: int) -> dict[str, Any]:
        return {}

    def epoch_metrics(self, env: Any, module: nn.Module) -> dict[str, Any]:
        """This rank's pair draw of the epoch (pairs, dropped same-item pairs, events kept by
        subsampling)."""
        return dict(self._last)

    def full_state(self, env: Any, module: nn.Module) -> dict[str, torch.Tensor]:
        return module.state_dict()

    def load_full_state(self, env: Any, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        module.load_state_dict(state)


registry.register(registry.ModelSpec(
    name="item2vec", config_cls=Item2VecConfig, build=build, kind="embedding", task=Item2VecTask,
    default_config="item2vec_ml100k.yaml", parallelism="data",
    refused_engines={"deepspeed": (
        "item2vec is two N x dim tables and no dense layers: each step reads a few hundred "
        "rows, so ZeRO's partitioning of optimiser state and gradients saves nothing, and the "
        "per-(seed, epoch, rank) pair draws and resume are tested under DDP only; use "
        "scaling.engine=ddp")},
    job_defaults={"optim": {"name": "adam", "lr": 0.005, "sparse_item_rows": False},
                  "train": {"batch_size": 1024, "epochs": 5},
                  "data": {"valid_split": None, "test_split": None}},
))

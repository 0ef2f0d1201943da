"""Collaborative filtering with attention over frozen item embeddings (seed 002 section 4)
and its deep-averaging baseline DAN (section 5.2).  Registry kind ``history``.

Both models score a (history, query item) pair from the user's past items only (no user
parameters), reading the item vectors ``x`` of a published item2vec version
(``data.embeddings: runs/item2vec-ml100k@current``) as a frozen buffer (section 3: "the
embeddings are left fixed and not updated when training downstream collaborative filtering
models").

Attention (section 4.1, eq. 3), ``K = hops``, ``d' = hidden``, ``f^k, g^k, h: R^d -> R^d'``
linear (``B x + c``)::

    z^0   = h(x_q)
    p^k_i = softmax_i( f^k(x_i)^T z^{k-1} )          over the history i in T_u (padding masked)
    z^k   = z^{k-1} + sum_i p^k_i g^k(x_i)           k = 1..K
    r(q, T_u) = sigma(phi^T z^K)

``(2K + 1)(d d' + d') + d'`` parameters: 174,848 at d 64, d' 128, K 10 ("just under 200,000",
section 3).  Parameters are initialised orthogonally (section 4.3, Saxe et al.), biases 0.

DAN (section 5.2, the variant the paper reports): ``r = sigma(mu(x_hat_u)^T x_q)`` with
``x_hat_u`` the mean history vector and ``mu`` two ReLU layers of 128 and a linear map to d.

Training (sections 4.2, 4.3; :class:`HistoryTask`): every user's sequence is cut in time
(``cut: random`` a uniform cut, ``last`` the last ``future`` items), ``T_u`` the items before
the cut (the newest ``history.max_len`` distinct ones), ``S_u`` the next ``future`` (<= 10)
distinct items, ``N_u`` ``negatives`` (100) draws from ``P_alpha`` (eq. 5, alpha 0.75, alias
method) with the hits of ``S_u`` redrawn; the loss is the balanced ``L-hat``
(:func:`rayrec.models.losses.balanced_logistic`).  The models return logits; ``sigma`` is
applied by the loss (log-sigmoid form) and is monotone, so rankings use the logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from rayrec.models import registry
from rayrec.models.losses import balanced_logistic
from rayrec.models.samplers import make_sampler, sample_excluding

__all__ = ["DAN", "AttentionCF", "AttentionCFConfig", "DANConfig", "HistoryConfig", "HistoryTask",
           "build_attention", "build_dan", "pad_rows", "prepare_history", "score_candidates"]


class HistoryConfig(BaseModel):
    """``max_len``: the newest distinct items kept of a history (older ones dropped)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_len: int = Field(200, ge=1)


class _HistoryModelConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    dim: int = Field(64, ge=1)
    """d: the item vectors' size (must equal the published embedding's)."""
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    cut: Literal["random", "last"] = "random"
    future: int = Field(10, ge=1)
    """|S_u|: targets after the cut (section 4.3: 10)."""
    negatives: int = Field(100, ge=1)
    """|N_u| (section 4.3: 100)."""
    alpha: float = Field(0.75, ge=0, le=1)
    """gamma of P_gamma (eq. 5) for the training negatives (section 4.3: 0.75)."""
    sampler: Literal["alias", "cdf"] = "alias"
    sample_store: int = Field(1_000_000, ge=1)


class AttentionCFConfig(_HistoryModelConfig):
    name: Literal["attention_cf"] = "attention_cf"
    hops: int = Field(10, ge=1)
    """K (section 4.3: 10)."""
    hidden: int = Field(128, ge=1)
    """d' (section 4.3: 128)."""


class DANConfig(_HistoryModelConfig):
    name: Literal["dan"] = "dan"
    layers: list[int] = Field(default_factory=lambda: [128, 128])
    """ReLU layer widths of mu (section 5.2: two layers of 128)."""


# ---------------------------------------------------------------------------- histories


def prepare_history(items: Sequence[int] | np.ndarray, max_len: int) -> np.ndarray:
    """The newest ``max_len`` distinct items of a history (oldest first), each item once at its
    latest position."""
    a = np.asarray(items, dtype=np.int64)[::-1]
    _, first = np.unique(a, return_index=True)  # first occurrence from the newest end
    keep = np.sort(first)[:max_len]
    return a[keep][::-1].copy()


def pad_rows(rows: Sequence[np.ndarray | Sequence[int]], width: int | None = None) -> torch.Tensor:
    """(R, width) long, rows left-aligned, padding -1."""
    width = max([len(r) for r in rows] + [1]) if width is None else width
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(np.asarray(r, dtype=np.int64)[:width])
    return out


def _check_embeddings(cfg: _HistoryModelConfig, embeddings: torch.Tensor | int) -> torch.Tensor:
    if isinstance(embeddings, int):  # a placeholder: load_state_dict fills it from a checkpoint
        return torch.zeros(embeddings, cfg.dim)
    e = torch.as_tensor(embeddings, dtype=torch.float32)
    if e.dim() != 2 or e.shape[1] != cfg.dim:
        raise ValueError(f"model.dim={cfg.dim} but the item embeddings are {tuple(e.shape)}")
    if not bool(torch.isfinite(e).all()):
        raise ValueError("item embeddings hold NaN or inf")
    return e.detach().clone()


def _history_mask(hist: torch.Tensor) -> torch.Tensor:
    mask = hist >= 0
    empty = ~mask.any(1)
    if bool(empty.any()):
        raise ValueError(f"history rows {torch.nonzero(empty).flatten().tolist()[:10]} are empty: a history "
                         "model needs at least one known past item")
    return mask


class AttentionCF(nn.Module):
    """Eq. 3.  ``forward(hist (B, L) long, query (B, Q) long) -> logits (B, Q)`` with
    ``phi^T z^K``; ``-1`` pads both.  ``item_vectors`` is a frozen buffer (N, d)."""

    def __init__(self, cfg: AttentionCFConfig, embeddings: torch.Tensor | int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("item_vectors", _check_embeddings(cfg, embeddings))
        self.n_items = int(self.item_vectors.shape[0])
        d, h = cfg.dim, cfg.hidden
        self.h = nn.Linear(d, h)
        self.f = nn.ModuleList(nn.Linear(d, h) for _ in range(cfg.hops))
        self.g = nn.ModuleList(nn.Linear(d, h) for _ in range(cfg.hops))
        self.phi = nn.Parameter(torch.empty(h))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for lin in [self.h, *self.f, *self.g]:
            nn.init.orthogonal_(lin.weight, generator=generator)
            lin.bias.zero_()
        phi = torch.empty(1, self.cfg.hidden)
        nn.init.orthogonal_(phi, generator=generator)  # a random unit vector
        self.phi.copy_(phi[0])

    def _attend(self, hist: torch.Tensor, query: torch.Tensor, keep: list | None = None) -> torch.Tensor:
        mask = _history_mask(hist)  # (B, L)
        xh = self.item_vectors[hist.clamp(min=0)]  # (B, L, d)
        z = self.h(self.item_vectors[query.clamp(min=0)])  # (B, Q, d')
        neg_inf = torch.finfo(z.dtype).min
        for f, g in zip(self.f, self.g):
            logits = torch.einsum("bqe,ble->bql", z, f(xh)).masked_fill(~mask[:, None, :], neg_inf)
            p = torch.softmax(logits, dim=-1)  # (B, Q, L), 0 on padding
            if keep is not None:
                keep.append(p)
            z = z + torch.bmm(p, g(xh))
        return z

    def forward(self, hist: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return self._attend(hist, query) @ self.phi

    @torch.no_grad()
    def attention(self, hist: torch.Tensor, query: torch.Tensor) -> list[torch.Tensor]:
        """The K attention maps p^k, each (B, Q, L)."""
        out: list[torch.Tensor] = []
        self._attend(hist, query, out)
        return out


class DAN(nn.Module):
    """Section 5.2: ``logit = mu(mean_i x_i)^T x_q``; same interface as :class:`AttentionCF`."""

    def __init__(self, cfg: DANConfig, embeddings: torch.Tensor | int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("item_vectors", _check_embeddings(cfg, embeddings))
        self.n_items = int(self.item_vectors.shape[0])
        sizes = [cfg.dim, *cfg.layers]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], cfg.dim))
        self.mu = nn.Sequential(*layers)
        with torch.no_grad():
            for m in self.mu:
                if isinstance(m, nn.Linear):
                    nn.init.orthogonal_(m.weight, generator=generator)
                    m.bias.zero_()

    def forward(self, hist: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        mask = _history_mask(hist).to(self.item_vectors.dtype)  # (B, L)
        xh = self.item_vectors[hist.clamp(min=0)]  # (B, L, d)
        mean = (xh * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, d)
        u = self.mu(mean)  # (B, d)
        return torch.einsum("bd,bqd->bq", u, self.item_vectors[query.clamp(min=0)])


def build_attention(cfg: AttentionCFConfig, embeddings: torch.Tensor | int) -> AttentionCF:
    """``embeddings``: the (N, d) item vectors, or N for a placeholder a checkpoint fills."""
    return AttentionCF(cfg, embeddings)


def build_dan(cfg: DANConfig, embeddings: torch.Tensor | int) -> DAN:
    return DAN(cfg, embeddings)


@torch.no_grad()
def score_candidates(model: nn.Module, histories: Sequence[np.ndarray], candidates: np.ndarray,
                     batch_size: int = 256) -> np.ndarray:
    """(T, C) logits of ``candidates`` (-1 pads, scored -inf) given each case's history
    (already :func:`prepare_history`-ed, non-empty)."""
    was = model.training
    model.eval()
    device = model.item_vectors.device
    cand = torch.as_tensor(np.asarray(candidates, dtype=np.int64))
    out = torch.empty(cand.shape, dtype=torch.float32)
    try:
        for a in range(0, len(histories), batch_size):
            b = min(a + batch_size, len(histories))
            q = cand[a:b].to(device)
            s = model(pad_rows(histories[a:b]).to(device), q).float().cpu()
            out[a:b] = s.masked_fill(cand[a:b] < 0, float("-inf"))
    finally:
        model.train(was)
    return out.numpy()


# ---------------------------------------------------------------------------- training


class HistoryTask:
    """Training of a history model on the loop.  ``env.train``: one CSR sequence per user of
    this rank (``offsets``, ``items`` in time order); ``env.inputs["embeddings"]``: the frozen
    (N, d) item vectors; ``env.train_counts``: distinct users per item (eq. 5)."""

    parallelism = "data"
    module_cls: type[nn.Module] = AttentionCF

    def __init__(self, job: Any) -> None:
        self.cfg = job.model
        self.module_cls = AttentionCF if self.cfg.name == "attention_cf" else DAN

    def build(self, env: Any, generator: torch.Generator) -> nn.Module:
        self.device = env.device
        emb = env.inputs.get("embeddings") if env.inputs else None
        if emb is None:
            raise ValueError(f"model {self.cfg.name}: no item embeddings (data.embeddings)")
        self.sampler = make_sampler(self.cfg.sampler, env.train_counts, self.cfg.alpha, self.cfg.sample_store,
                                    torch.Generator().manual_seed(env.seed))
        lens = np.diff(env.train.offsets)
        self.users = np.flatnonzero(lens >= 2)  # a cut needs an item before and after it
        return self.module_cls(self.cfg, emb, generator)

    def param_groups(self, module: nn.Module, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in module.parameters() if p.requires_grad]}]

    def num_batches(self, env: Any, batch_size: int) -> int:
        return math.ceil(self.users.size / batch_size)

    def example(self, items: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(T_u, S_u) of one user's sequence (section 4.2's temporal partition)."""
        n = items.size
        cut = int(rng.integers(1, n)) if self.cfg.cut == "random" else max(1, n - self.cfg.future)
        hist = prepare_history(items[:cut], self.cfg.history.max_len)
        fut = items[cut:]
        _, first = np.unique(fut, return_index=True)
        return hist, fut[np.sort(first)][: self.cfg.future]

    def batches(self, env: Any, module: nn.Module, epoch: int, batch_size: int,
                rng: np.random.Generator) -> Iterator[Any]:
        self.sampler.reseed(torch.Generator().manual_seed(int(rng.integers(2**62))))
        order = rng.permutation(self.users)
        off, items = env.train.offsets, env.train.items
        for a in range(0, order.size, batch_size):
            hs, ss = [], []
            for u in order[a:a + batch_size]:
                h, s = self.example(items[off[u]:off[u + 1]], rng)
                hs.append(h)
                ss.append(s)
            neg = sample_excluding(self.sampler, self.cfg.negatives, ss)
            yield pad_rows(hs).to(self.device), pad_rows(ss).to(self.device), neg.to(self.device)

    def loss(self, forward: Callable[..., Any], batch: Any, pad: bool = False) -> tuple[torch.Tensor, int]:
        hist, pos, neg = batch
        logits = forward(hist, torch.cat([pos, neg], 1))
        p = pos.shape[1]
        return balanced_logistic(logits[:, :p], pos >= 0, logits[:, p:], torch.ones_like(neg, dtype=torch.bool)), \
            int(hist.shape[0])

    def evaluate(self, env: Any, module: nn.Module, ks: Sequence[int], batch_size: int) -> dict[str, Any]:
        return env.evaluate(module, env.valid, ks, batch_size)

    def full_state(self, env: Any, module: nn.Module) -> dict[str, torch.Tensor]:
        return module.state_dict()

    def load_full_state(self, env: Any, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        module.load_state_dict(state)


_DEFAULTS = {"optim": {"name": "adam", "lr": 0.002, "clip_norm": 10.0, "sparse_item_rows": False},
             "train": {"batch_size": 64, "shuffle": True},
             "data": {"train_split": "train", "valid_split": "valid", "test_split": "test"}}

registry.register(registry.ModelSpec(
    name="attention_cf", config_cls=AttentionCFConfig, build=build_attention, kind="history",
    task=HistoryTask, default_config="attention_cf_ml100k.yaml", job_defaults=_DEFAULTS,
))
registry.register(registry.ModelSpec(
    name="dan", config_cls=DANConfig, build=build_dan, kind="history",
    task=HistoryTask, default_config="dan_ml100k.yaml", job_defaults=_DEFAULTS,
))

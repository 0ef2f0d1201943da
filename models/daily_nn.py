"""The daily two-layer recommender of seed 000 (Rybakov et al.).

Seed 000 trains a feed-forward network with two hidden layers on a customer's purchase
history ``X`` (the input window ``dx .. dxy``, section 3.1) to predict the purchases ``Y`` of
the following week (``dxy .. dyz``); it is re-trained every day (section 5).  This module
implements:

* the network of eq. 3 / eq. 6: ``A0 = Td(XT, ti) + xi``,
  ``Aj = Drop(Act(Wj A(j-1) + Bj))`` for the two hidden layers and
  ``Y_hat = Sigm(WL A(L-1) + BL)`` over the ``P`` products;
* the input time decay: none (binary ``X``, eq. 3), the parametric ``Td`` of eq. 5, or the
  convolutional decay of eq. 4 (32 one-hot date buckets over two years, one kernel of size 32
  shared by all products);
* the combined cost of eqs. 6-9 with three variants (section 3.5): the *predictor* (hard
  split, eq. 3: ``wa1 = wa0 = 0``), *EW* (``ti = to = 1e6, wp0 = 0``) and *soft split*
  (``ti = 40, to = 4, wp0 = 0``), plus the L2 term and the KL sparsity penalty of eq. 3;
* ``fit_parametric_decay`` (least-squares fit of eq. 5 to a learned eq. 4 kernel, Figure 4)
  and ``clip_catalog`` (keep the ``P`` most purchased products, section 3.1 / section 5).

Input is sparse (the paper uses sparse matrix multiplication, section 3.1): a batch is
CSR-like, ``item_idx (nnz,)``, ``days_ago (nnz,)`` and ``offsets (B+1,)``, and the first
layer is an ``EmbeddingBag`` whose per-sample weights are the decayed inputs.  With the
parametric decay of eq. 5 it is the fused ``rayrec.ops_kernels.decayed_embedding_bag``
(:func:`decayed_input`: Td computed inside, backend by ``RAYREC_KERNELS``); binary input and
the learned decay of eq. 4 (whose input values need a gradient) keep ``EmbeddingBag``.  No dense
``(B, P)`` input or target matrix is ever built.  The output layer does produce a dense
``(B, P)`` block of logits on one device (the weighted cross-entropy of eq. 3 sums
``log(1 - y_hat)`` over every product); at ``P = 100k`` and ``B = 256`` that is 25.6M floats
(~100 MB with its softplus), which is acceptable on one worker.

:class:`DailyNN` is the one definition of the network.  Larger catalogs split it by product
(seed 000 section 5, model parallelism): a ``DailyNN`` restricted to a product range holds
only that range's input rows, output rows and output biases (:attr:`DailyNN.catalog_dims`),
and its three collective hooks (``reduce_sum``, ``copy_to_parallel``, ``gather``; identity
functions by default) combine the ranges.  ``rayrec.platform.training.tensor_parallel``
builds such a shard and installs the collectives (``shard_daily_nn``); checkpoints always
hold the whole-catalog ``DailyNN().state_dict()``.  This module imports no platform code.

Conventions (documented deviations / readings of the text):

* ``days_ago`` is ``ref - d`` in days, ``ref`` being the end of the input window (``dxy``
  when training, ``dyz`` when generating recommendations, eq. 5).  Eq. 5 reads ``d < ref``
  but Figure 1 puts purchases made *on* ``dxy`` in ``X``; we therefore give ``days_ago == 0``
  the full weight 1 and only ``days_ago < 0`` (a date after ``ref``) the weight 0.
* The cost of one customer is a sum over products (eq. 3); a batch's cost is the mean over
  its customers.  ``lambda * sum |Wj|^2`` covers the weight matrices (not the biases) of all
  three layers, and the KL term sums ``KL(rho, rho'_j)`` over the hidden units of both
  hidden layers, ``rho'_j`` being the unit's mean activation over the batch before dropout
  (Ng, 2011).  ReLU activations are clamped into ``(eps, 1 - eps)`` for the KL term.
* The input noise ``xi`` must keep the input sparse, so it is the *masking* corruption of
  Vincent et al. (2008), which the paper cites for it: during training each purchase in
  ``X`` is dropped with probability ``input_noise``.
* Repeated (customer, product) pairs: the input sums them (the caller should keep one
  purchase per pair, normally the most recent); the cost treats ``X``, ``Y`` and ``XY`` as
  sets (``{0, 1}^P``) and uses the most recent purchase date for ``Td(xt_p, to)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from rayrec.ops_kernels import decayed_embedding_bag, gather_unique_rows

__all__ = [
    "DECAY_BUCKETS",
    "DECAY_HORIZON_DAYS",
    "CostWeights",
    "DailyNN",
    "DailyNNConfig",
    "INIT_BLOCK",
    "SparseBatch",
    "build_daily_nn",
    "clip_catalog",
    "combined_cost",
    "decay_bucket",
    "decayed_input",
    "fit_parametric_decay",
    "kl_sparsity",
    "local_batch",
    "time_decay",
]

#: Eq. 4: two years of purchase dates are cut into 32 one-hot buckets (~22 days each).
DECAY_BUCKETS = 32
#: The horizon of the bucketed dates: two years, section 3.1 / 3.4.
DECAY_HORIZON_DAYS = 730.0

_VARIANT_PRESETS: dict[str, dict[str, float]] = {
    # eq. 3 recovered from eq. 6 (section 3.5): ti = 1e6, to = 1e-6, wa1 = wa0 = 0.
    "predictor": {"ti": 1e6, "to": 1e-6},
    # Equally weighted auto-encoder + predictor: ti = to = 1e6, wp0 = 0.
    "ew": {"ti": 1e6, "to": 1e6},
    # Soft split: ti = 40, to = 4, wp0 = 0 (values found by the paper's hyper-parameter search).
    "soft_split": {"ti": 40.0, "to": 4.0},
}


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostWeights:
    """The four constant weights of eqs. 8-9 and the two decay parameters (days)."""

    wa1: float
    wa0: float
    wp1: float
    wp0: float
    ti: float
    to: float


class DailyNNConfig(BaseModel):
    """Hyper-parameters of the daily two-layer network (seed 000, eqs. 3-9).

    ``ti`` / ``to`` left as ``None`` take the value fixed by ``variant`` (section 3.5):
    predictor ``ti = 1e6`` (no input decay) and ``to = 1e-6``; EW ``ti = to = 1e6``; soft split
    ``ti = 40``, ``to = 4``.  Set ``ti = 40`` on the predictor for Table 1's "parametrical
    time decay" row.  ``decay`` chooses how the input is weighted: ``"none"`` (binary ``X``,
    eq. 3), ``"parametric"`` (``Td(XT, ti)``, eqs. 5-6) or ``"learned"`` (eq. 4).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["daily_nn"] = "daily_nn"
    hidden_sizes: tuple[int, int] = (512, 256)
    activation: Literal["relu", "sigmoid"] = "relu"
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    input_noise: float = Field(0.0, ge=0.0, lt=1.0)
    decay: Literal["none", "parametric", "learned"] = "parametric"
    conv_activation: Literal["relu", "sigmoid", "identity"] | None = None
    ti: float | None = Field(None, gt=0.0)
    to: float | None = Field(None, gt=0.0)
    w1: float = Field(1.0, gt=0.0)
    w0: float = Field(1.0, ge=0.0)
    l2: float = Field(0.0, ge=0.0)
    sparsity_target: float = Field(0.05, gt=0.0, lt=1.0)
    sparsity_weight: float = Field(0.0, ge=0.0)
    variant: Literal["predictor", "ew", "soft_split"] = "soft_split"

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_sizes(cls, v: tuple[int, int]) -> tuple[int, int]:
        if any(int(h) <= 0 for h in v):
            raise ValueError(f"hidden_sizes must be two positive integers, got {v}")
        return v

    def cost_weights(self) -> CostWeights:
        """The resolved ``wa1, wa0, wp1, wp0, ti, to`` of eqs. 6-9 for this variant.

        ``w1`` / ``w0`` play the role of the "1" weights of section 3.5: the predictor uses
        ``wp1 = w1, wp0 = w0`` and no auto-encoder term (exactly eq. 3); EW and soft split use
        ``wa1 = wp1 = w1``, ``wa0 = w0`` and ``wp0 = 0``, so negatives are the products in
        neither ``X`` nor ``Y`` (the ``1 - xy_p`` of eq. 8).
        """
        preset = _VARIANT_PRESETS[self.variant]
        ti = self.ti if self.ti is not None else preset["ti"]
        to = self.to if self.to is not None else preset["to"]
        if self.variant == "predictor":
            return CostWeights(wa1=0.0, wa0=0.0, wp1=self.w1, wp0=self.w0, ti=ti, to=to)
        return CostWeights(wa1=self.w1, wa0=self.w0, wp1=self.w1, wp0=0.0, ti=ti, to=to)


# --------------------------------------------------------------------------------------
# sparse batches
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseBatch:
    """A CSR batch of purchase sets: row ``b`` holds ``item_idx[offsets[b]:offsets[b+1]]``.

    ``days_ago`` (purchase age in days relative to the window end) is required for model
    inputs and for the auto-encoder term; target batches may leave it ``None``.
    """

    item_idx: torch.Tensor  # (nnz,) int64
    offsets: torch.Tensor  # (B+1,) int64, offsets[0] == 0, offsets[-1] == nnz
    days_ago: torch.Tensor | None = None  # (nnz,) float

    @property
    def batch_size(self) -> int:
        return int(self.offsets.numel()) - 1

    @property
    def nnz(self) -> int:
        return int(self.item_idx.numel())

    def row_ids(self) -> torch.Tensor:
        """The row of every non-zero, ``(nnz,)`` int64."""
        counts = self.offsets[1:] - self.offsets[:-1]  # (B,)
        rows = torch.arange(self.batch_size, device=self.offsets.device)
        return torch.repeat_interleave(rows, counts)

    def to(self, device: torch.device | str) -> SparseBatch:
        """The same batch on ``device``."""
        return SparseBatch(
            item_idx=self.item_idx.to(device),
            offsets=self.offsets.to(device),
            days_ago=None if self.days_ago is None else self.days_ago.to(device),
        )

    @classmethod
    def from_lists(
        cls,
        items: Sequence[Sequence[int]],
        days: Sequence[Sequence[float]] | None = None,
    ) -> SparseBatch:
        """Build a batch from per-row item lists (and optional per-row ages in days)."""
        lengths = [len(r) for r in items]
        if days is not None:
            if len(days) != len(items) or any(len(d) != n for d, n in zip(days, lengths)):
                raise ValueError("days must have the same row lengths as items")
        offsets = torch.zeros(len(items) + 1, dtype=torch.long)
        if lengths:
            offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0)
        flat = [int(i) for r in items for i in r]
        item_idx = torch.tensor(flat, dtype=torch.long)
        days_t = None
        if days is not None:
            days_t = torch.tensor([float(x) for r in days for x in r], dtype=torch.float32)
        return cls(item_idx=item_idx, offsets=offsets, days_ago=days_t)

    @classmethod
    def coerce(cls, batch: SparseBatch | Mapping[str, Any]) -> SparseBatch:
        """Accept a ``SparseBatch`` or a mapping with ``item_idx``, ``offsets``, ``days_ago``."""
        if isinstance(batch, SparseBatch):
            return batch
        if isinstance(batch, Mapping):
            missing = [k for k in ("item_idx", "offsets") if k not in batch]
            if missing:
                raise ValueError(f"sparse batch is missing {', '.join(missing)}")
            days = batch.get("days_ago")
            return cls(
                item_idx=torch.as_tensor(batch["item_idx"], dtype=torch.long),
                offsets=torch.as_tensor(batch["offsets"], dtype=torch.long),
                days_ago=None if days is None else torch.as_tensor(days, dtype=torch.float32),
            )
        raise TypeError(f"expected SparseBatch or mapping, got {type(batch).__name__}")

    def validate(self, num_items: int, name: str = "batch", need_days: bool = False) -> None:
        """Raise ``ValueError`` naming the field when the CSR arrays are inconsistent."""
        if self.offsets.dim() != 1 or self.offsets.numel() < 1:
            raise ValueError(f"{name}.offsets must be 1-D with B+1 entries")
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != self.nnz:
            raise ValueError(
                f"{name}.offsets must start at 0 and end at nnz={self.nnz}, "
                f"got {int(self.offsets[0])}..{int(self.offsets[-1])}"
            )
        if self.offsets.numel() > 1 and bool((self.offsets[1:] < self.offsets[:-1]).any()):
            raise ValueError(f"{name}.offsets must be non-decreasing")
        if self.nnz and (int(self.item_idx.min()) < 0 or int(self.item_idx.max()) >= num_items):
            raise ValueError(
                f"{name}.item_idx out of range [0, {num_items}): "
                f"min {int(self.item_idx.min())}, max {int(self.item_idx.max())}"
            )
        if need_days and self.days_ago is None:
            raise ValueError(f"{name}.days_ago is required")
        if self.days_ago is not None:
            if self.days_ago.shape != self.item_idx.shape:
                raise ValueError(
                    f"{name}.days_ago has shape {tuple(self.days_ago.shape)}, "
                    f"item_idx {tuple(self.item_idx.shape)}"
                )
            if self.nnz and bool((self.days_ago < 0).any()):
                raise ValueError(
                    f"{name}.days_ago has negative ages (min {float(self.days_ago.min())}): "
                    "an input purchase after the window end"
                )
            if self.nnz and not bool(torch.isfinite(self.days_ago).all()):
                raise ValueError(f"{name}.days_ago has non-finite values")


# --------------------------------------------------------------------------------------
# time decay (eqs. 4, 5)
# --------------------------------------------------------------------------------------


def time_decay(days_ago: torch.Tensor | float, decay: float) -> torch.Tensor:
    """Eq. 5: ``Td = 1 / (1 + (ref - d) / decay)`` for ``d <= ref``, else 0.

    ``days_ago = ref - d`` in days (see the module note on ``d == ref``); ``decay`` > 0 days.
    """
    if not decay > 0:
        raise ValueError(f"decay must be > 0 days, got {decay}")
    a = torch.as_tensor(days_ago)
    if not a.is_floating_point():
        a = a.to(torch.get_default_dtype())
    return torch.where(a >= 0, 1.0 / (1.0 + a.clamp(min=0) / decay), torch.zeros_like(a))


def decay_bucket(days_ago: torch.Tensor) -> torch.Tensor:
    """Eq. 4's ``Bin()``: the one-hot bucket (0 = most recent .. 31 = two years) of an age.

    Ages beyond two years fall into the last bucket.
    """
    width = DECAY_HORIZON_DAYS / DECAY_BUCKETS
    return torch.floor(days_ago.clamp(min=0) / width).long().clamp(max=DECAY_BUCKETS - 1)


def _bucket_centres() -> torch.Tensor:
    width = DECAY_HORIZON_DAYS / DECAY_BUCKETS
    return (torch.arange(DECAY_BUCKETS, dtype=torch.float64) + 0.5) * width  # (32,)


def fit_parametric_decay(
    learned_curve: torch.Tensor | Sequence[float] | np.ndarray,
    *,
    return_scale: bool = False,
) -> float | tuple[float, float]:
    """Least-squares fit of eq. 5's ``decay`` to a learned eq. 4 curve (Figure 4).

    ``learned_curve`` holds the 32 per-bucket input weights (``DailyNN.learned_decay_curve``),
    bucket ``i`` standing for the age at its centre ``(i + 0.5) * 730 / 32`` days.  The
    learned curve has an arbitrary scale (the next layer absorbs it), so the fit minimises
    ``sum_i (s * Td(t_i, decay) - curve_i)^2`` over ``s`` (closed form) and ``decay`` (a log
    grid from 0.1 to 1e5 days refined by golden-section search).  Returns ``decay`` in days,
    or ``(decay, s)`` with ``return_scale``.
    """
    y = torch.as_tensor(np.asarray(learned_curve, dtype=np.float64)).flatten()
    if y.numel() != DECAY_BUCKETS:
        raise ValueError(f"learned_curve must have {DECAY_BUCKETS} values, got {y.numel()}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("learned_curve has non-finite values")
    t = _bucket_centres()

    def sse(log_decay: float) -> tuple[float, float]:
        f = 1.0 / (1.0 + t / math.exp(log_decay))  # (32,)
        s = float((f * y).sum() / (f * f).sum())
        return float(((s * f - y) ** 2).sum()), s

    grid = np.linspace(math.log(0.1), math.log(1e5), 200)
    errs = [sse(g)[0] for g in grid]
    k = int(np.argmin(errs))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(80):
        m1 = hi - ratio * (hi - lo)
        m2 = lo + ratio * (hi - lo)
        if sse(m1)[0] <= sse(m2)[0]:
            hi = m2
        else:
            lo = m1
    best = 0.5 * (lo + hi)
    decay = math.exp(best)
    if return_scale:
        return decay, sse(best)[1]
    return decay


def decayed_input(
    weight: torch.Tensor,
    batch: SparseBatch,
    decay: float,
    keep: torch.Tensor | None = None,
    start: int = 0,
    stop: int | None = None,
    backend: str | None = None,
    rows_view=None,
) -> torch.Tensor:
    """The first layer's ``W1 Td(XT, decay)`` of eq. 6 with eq. 5's decay: ``(B, H1)``.

    Row ``b`` is ``sum_n Td(days_ago_n, decay) weight[item_n - start]`` over the row's
    purchases with ``start <= item_n < stop`` (a row-parallel shard of ``W1``; the defaults
    take the whole table) and ``keep_n`` (``keep (nnz,)`` bool: the masking input noise
    ``xi``; a dropped purchase contributes exactly nothing, as a zero input value would).
    Runs the fused ``rayrec.ops_kernels.decayed_embedding_bag`` (``RAYREC_KERNELS`` or
    ``backend``); differentiable in ``weight``. ``decay`` is a constant (the parametric decay;
    the learned decay of eq. 4 needs the gradient of the input values and stays an
    ``embedding_bag`` with per-sample weights).  ``rows_view(weight, local_idx) -> (table,
    idx)``: look the rows up in another table (the batch's rows with a row-sparse gradient,
    :meth:`DailyNN._rows_view`).
    """
    if batch.days_ago is None:
        raise ValueError("batch.days_ago is required for the decayed input (eq. 5)")
    item_idx, offsets, days = batch.item_idx, batch.offsets, batch.days_ago
    sel = None
    if start != 0 or stop is not None:
        stop = start + weight.shape[0] if stop is None else stop
        sel = (item_idx >= start) & (item_idx < stop)  # (nnz,) this shard's purchases
    if keep is not None:
        sel = keep if sel is None else sel & keep
    if sel is not None:
        rows = batch.row_ids()[sel]
        offsets = torch.zeros_like(batch.offsets)
        offsets[1:] = torch.cumsum(torch.bincount(rows, minlength=batch.batch_size), 0)
        item_idx, days = item_idx[sel], days[sel]
    table, idx = (weight, item_idx - start) if rows_view is None else rows_view(weight, item_idx - start)
    return decayed_embedding_bag(table, idx, offsets, days, decay, backend=backend)


# --------------------------------------------------------------------------------------
# costs (eqs. 3, 6-9)
# --------------------------------------------------------------------------------------


def _unique_pairs(
    rows: torch.Tensor, items: torch.Tensor, num_items: int, values: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Deduplicate (row, item) pairs; ``values`` are reduced by max per pair."""
    keys = rows * num_items + items  # (nnz,)
    uniq, inverse = torch.unique(keys, return_inverse=True)
    vals = None
    if values is not None:
        vals = torch.full((uniq.numel(),), -math.inf, dtype=values.dtype, device=values.device)
        vals = vals.scatter_reduce(0, inverse, values, reduce="amax", include_self=True)
    return uniq // num_items, uniq % num_items, vals


def combined_cost(
    logits: torch.Tensor,
    inputs: SparseBatch,
    targets: SparseBatch,
    weights: CostWeights,
) -> torch.Tensor:
    """Per-customer combined cost of eqs. 7-9, ``(B,)``, from dense logits ``(B, P)``.

    ``auto = -sum_p [wa1 Td(xt_p, to) log y_hat_p + wa0 (1 - xy_p) log(1 - y_hat_p)]`` (eq. 8)
    and ``predict = -sum_p [wp1 y_p log y_hat_p + wp0 (1 - y_p) log(1 - y_hat_p)]`` (eq. 9).
    With ``-log y_hat = softplus(-z)`` and ``-log(1 - y_hat) = softplus(z)`` the dense part is
    ``(wa0 + wp0) sum_p softplus(z_p)``; the positive and correction terms are gathered at the
    non-zeros of ``X``, ``Y`` and ``XY`` only, so no dense target is built.
    """
    B, P = logits.shape  # (B, P)
    if inputs.batch_size != B or targets.batch_size != B:
        raise ValueError(
            f"batch sizes differ: logits {B}, inputs {inputs.batch_size}, "
            f"targets {targets.batch_size}"
        )
    cost = logits.new_zeros(B)  # (B,)
    neg_w = weights.wa0 + weights.wp0
    if neg_w != 0.0:
        cost = cost + neg_w * F.softplus(logits).sum(dim=1)

    y_rows, y_items, _ = _unique_pairs(targets.row_ids(), targets.item_idx, P)
    if weights.wp1 != 0.0 or weights.wp0 != 0.0:
        z = logits[y_rows, y_items]  # (nY,)
        term = weights.wp1 * F.softplus(-z) - weights.wp0 * F.softplus(z)
        cost = cost.index_add(0, y_rows, term)

    x_rows_all = inputs.row_ids()
    if weights.wa0 != 0.0:
        xy_rows, xy_items, _ = _unique_pairs(
            torch.cat([x_rows_all, targets.row_ids()]),
            torch.cat([inputs.item_idx, targets.item_idx]),
            P,
        )
        z = logits[xy_rows, xy_items]  # (nXY,)
        cost = cost.index_add(0, xy_rows, -weights.wa0 * F.softplus(z))

    if weights.wa1 != 0.0:
        if inputs.days_ago is None:
            raise ValueError("inputs.days_ago is required for the auto-encoder term (eq. 8)")
        x_rows, x_items, recent = _unique_pairs(
            x_rows_all, inputs.item_idx, P, -inputs.days_ago.to(logits.dtype)
        )
        td = time_decay(-recent, weights.to).to(logits.dtype)  # most recent purchase, (nX,)
        z = logits[x_rows, x_items]
        cost = cost.index_add(0, x_rows, weights.wa1 * td * F.softplus(-z))
    return cost


def kl_sparsity(mean_activation: torch.Tensor, rho: float, eps: float = 1e-6) -> torch.Tensor:
    """Sum over units of ``KL(rho, rho') = rho log(rho/rho') + (1-rho) log((1-rho)/(1-rho'))``."""
    r = mean_activation.clamp(eps, 1.0 - eps)
    return (rho * torch.log(rho / r) + (1.0 - rho) * torch.log((1.0 - rho) / (1.0 - r))).sum()


# --------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------

_ACTS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda x: x}

#: The catalog-wide tables are initialised per block of this many products (``_block_uniform``).
INIT_BLOCK = 4096


def _identity(t: torch.Tensor) -> torch.Tensor:
    """Default ``reduce_sum`` / ``copy_to_parallel`` hook: the unsharded model needs no collective."""
    return t


def _identity_gather(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Default ``gather`` hook: one range covers the whole catalog."""
    return t


def _block_uniform(start: int, stop: int, width: int, bound: float, seed: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of a ``(P, width)`` uniform(-bound, bound) matrix whose rows are
    generated per block of :data:`INIT_BLOCK` from ``(seed, block)``: any product range gets
    exactly its rows of the whole-catalog matrix, whatever the sharding."""
    out = torch.empty(stop - start, width)
    b0, b1 = start // INIT_BLOCK, (stop - 1) // INIT_BLOCK
    for b in range(b0, b1 + 1):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + b)
        block = torch.empty(INIT_BLOCK, width).uniform_(-bound, bound, generator=g)
        lo, hi = max(start, b * INIT_BLOCK), min(stop, (b + 1) * INIT_BLOCK)
        out[lo - start : hi - start] = block[lo - b * INIT_BLOCK : hi - b * INIT_BLOCK]
    return out


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` holding the given ``(out, in)`` weight and ``(out,)`` bias (no default
    initialisation, no draw from the global RNG)."""
    out_f, in_f = weight.shape
    layer = nn.Linear(in_f, out_f, device="meta")
    layer.weight = nn.Parameter(weight)
    layer.bias = nn.Parameter(bias)
    return layer


def local_batch(batch: SparseBatch, start: int, stop: int) -> SparseBatch:
    """The purchases of ``batch`` in products ``[start, stop)``, renumbered from 0 (same rows)."""
    keep = (batch.item_idx >= start) & (batch.item_idx < stop)  # (nnz,)
    rows = batch.row_ids()[keep]
    offsets = torch.zeros(batch.batch_size + 1, dtype=torch.long, device=batch.offsets.device)
    offsets[1:] = torch.cumsum(torch.bincount(rows, minlength=batch.batch_size), 0)
    days = None if batch.days_ago is None else batch.days_ago[keep]
    return SparseBatch(item_idx=batch.item_idx[keep] - start, offsets=offsets, days_ago=days)


class DailyNN(nn.Module):
    """Two hidden layers over a sparse, time-decayed purchase vector (eqs. 3-9), whole
    catalog or one product range of it.

    ``forward(batch) -> hidden (B, H2)``; ``score(hidden, item_idx=None)`` gives logits over
    all ``P`` products (or a subset); ``loss(hidden, targets, inputs)`` the scalar of eq. 6.

    **Initialisation** is deterministic and independent of the global RNG: the catalog-wide
    tables (``W1`` rows, ``W_L`` rows and ``B_L``) come from :func:`_block_uniform` with
    ``seed``, ``seed + 1`` and ``seed + 2`` (uniform in ``+-1/sqrt(H1)``, ``+-1/sqrt(H2)``),
    the hidden layer from ``torch.Generator().manual_seed(seed + 7)`` (weight then bias,
    ``+-1/sqrt(H1)``); ``input_bias`` starts at 0 and the eq. 4 kernel at 1 (binary input).

    **Product range** ``[start, stop)`` (default the whole catalog ``[0, num_items)``): the
    catalog-wide parameters listed in :attr:`catalog_dims` then hold only that range (input
    table rows, output weight rows and output bias; ``nn.Linear`` stores ``W_L`` as
    ``(P, H2)``), initialised to exactly those rows of the whole-catalog model with the same
    seed.  Item ids stay global everywhere (batches, ``num_items``); the range model bags only
    the purchases in its range and scores only its products.  The places where ranges must
    be combined call three hooks, identity functions by default (so the whole-catalog model
    is plain single-device PyTorch); a tensor-parallel run installs collectives
    (``rayrec.platform.training.tensor_parallel.shard_daily_nn``):

    * ``reduce_sum(t)``: sum over ranges, gradient passed through unchanged (the first
      layer's partial pre-activations, the per-range costs and L2 sums);
    * ``copy_to_parallel(t)``: identity, gradient summed over ranges (a replicated tensor
      that each range uses only partly: the hidden output feeding the output rows, eq. 4's
      input values and its constant ``Act(wb)``);
    * ``gather(t, dim)``: the ranges' tensors concatenated along ``dim`` (full logits).

    The hidden layer, ``input_bias`` and the eq. 4 kernel are replicated; every range must
    see the same batch and the same torch RNG state (dropout and the input noise ``xi``,
    drawn once per forward over all non-zeros, are then identical everywhere).
    """

    #: catalog-wide parameters (state-dict names) -> the dimension that runs over products
    catalog_dims: ClassVar[dict[str, int]] = {
        "input_layer.weight": 0,
        "output_layer.weight": 0,
        "output_layer.bias": 0,
    }

    def __init__(
        self,
        num_items: int,
        config: DailyNNConfig | None = None,
        seed: int = 0,
        *,
        start: int = 0,
        stop: int | None = None,
    ) -> None:
        super().__init__()
        if int(num_items) <= 0:
            raise ValueError(f"num_items must be positive, got {num_items}")
        self.config = config if config is not None else DailyNNConfig()
        self.num_items = int(num_items)
        self.start = int(start)
        self.stop = self.num_items if stop is None else int(stop)
        if not 0 <= self.start < self.stop <= self.num_items:
            raise ValueError(
                f"product range [{start}, {stop}) must be non-empty and within [0, {self.num_items})"
            )
        self.seed = int(seed)
        self.weights = self.config.cost_weights()
        h1, h2 = (int(h) for h in self.config.hidden_sizes)
        b1, b2 = 1.0 / math.sqrt(h1), 1.0 / math.sqrt(h2)
        s, e = self.start, self.stop
        # W1 stored as an embedding table (P_range, H1): EmbeddingBag = sparse X @ W1^T.
        self.input_layer = nn.EmbeddingBag(
            e - s, h1, mode="sum", include_last_offset=True,
            _weight=_block_uniform(s, e, h1, b1, self.seed),
        )
        self.input_bias = nn.Parameter(torch.zeros(h1))
        g = torch.Generator().manual_seed(self.seed + 7)
        hidden_w = torch.empty(h2, h1).uniform_(-b1, b1, generator=g)
        hidden_b = torch.empty(h2).uniform_(-b1, b1, generator=g)
        self.hidden_layer = _linear(hidden_w, hidden_b)
        self.output_layer = _linear(  # weight (P_range, H2), bias (P_range,)
            _block_uniform(s, e, h2, b2, self.seed + 1),
            _block_uniform(s, e, 1, b2, self.seed + 2).reshape(-1),
        )
        self.act = _ACTS[self.config.activation]
        if self.config.decay == "learned":
            # eq. 4: kernel wf (32,) shared by all products, bias wb; starts as binary input.
            self.conv_weight = nn.Parameter(torch.ones(DECAY_BUCKETS))
            self.conv_bias = nn.Parameter(torch.zeros(1))  # (1,): DeepSpeed cannot flatten 0-d
            self.conv_act = _ACTS[self.config.conv_activation or self.config.activation]
        self.dropout = nn.Dropout(self.config.dropout)
        #: row-sparse input-table gradients (set by the task from ``TaskEnv.sparse_rows``; see
        #: :attr:`sparse_input_possible`)
        self.sparse_rows = False
        # collective hooks (identity: the whole catalog on one device)
        self.reduce_sum: Callable[[torch.Tensor], torch.Tensor] = _identity
        self.copy_to_parallel: Callable[[torch.Tensor], torch.Tensor] = _identity
        self.gather: Callable[[torch.Tensor, int], torch.Tensor] = _identity_gather
        self._kl_cache: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    @property
    def catalog_range(self) -> tuple[int, int]:
        """``[start, stop)``: the products whose catalog-wide parameters this module holds."""
        return self.start, self.stop

    @property
    def is_sharded(self) -> bool:
        """Whether this module holds only part of the catalog."""
        return (self.start, self.stop) != (0, self.num_items)

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, products=[{self.start}, {self.stop})"

    @property
    def sparse_input_possible(self) -> bool:
        """Whether a step's input-table gradient is confined to the batch's products: not with
        eq. 4's learned decay (its ``Act(wb)`` reaches every product's row) nor with L2 on the
        weights (eq. 3's ``lambda |W1|^2`` has a gradient on every row).  The output layer is
        dense by definition (eq. 7 costs every product)."""
        return self.config.decay != "learned" and self.config.l2 == 0

    @property
    def row_sparse_input(self) -> bool:
        """:attr:`sparse_rows` where it applies (:attr:`sparse_input_possible`)."""
        return self.sparse_rows and self.sparse_input_possible

    def _rows_view(self, weight: torch.Tensor, item_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(table, idx)`` to look ``item_idx`` up in: with :attr:`sparse_rows` the batch's unique
        rows of ``weight`` (gathered with a row-sparse gradient) and indices into them."""
        if not self.row_sparse_input or not torch.is_grad_enabled():
            return weight, item_idx
        rows, inv = torch.unique(item_idx, return_inverse=True)
        return gather_unique_rows(weight, rows, "input_layer.weight"), inv

    # ---- input weighting --------------------------------------------------------------
    def input_weights(self, batch: SparseBatch) -> torch.Tensor:
        """Per-non-zero input values ``(nnz,)``: 1, ``Td(age, ti)`` or eq. 4's conv output.

        For the learned decay this is ``Act(wf[bucket] + wb) - Act(wb)``; the constant
        ``Act(wb)`` that eq. 4 gives every product (purchased or not) is added densely in
        :meth:`forward` as ``Act(wb) * W1 @ 1``.
        """
        kind = self.config.decay
        dtype = self.input_layer.weight.dtype
        if kind == "none":
            return torch.ones(batch.nnz, dtype=dtype, device=batch.item_idx.device)
        if batch.days_ago is None:
            raise ValueError(f"batch.days_ago is required with decay={kind!r}")
        if kind == "parametric":
            return time_decay(batch.days_ago.to(dtype), self.weights.ti)
        b = decay_bucket(batch.days_ago)  # (nnz,)
        return self.conv_act(self.conv_weight[b] + self.conv_bias) - self.conv_act(self.conv_bias)

    def learned_decay_curve(self) -> torch.Tensor:
        """Eq. 4's learned time decay, ``(32,)``: a purchase's input value per date bucket."""
        if self.config.decay != "learned":
            raise ValueError(f"no learned decay: config.decay is {self.config.decay!r}")
        with torch.no_grad():
            return self.conv_act(self.conv_weight + self.conv_bias) - self.conv_act(self.conv_bias)

    # ---- forward ------------------------------------------------------------------------
    def _input_partial(self, batch: SparseBatch, keep: torch.Tensor | None) -> torch.Tensor:
        """This range's share of ``W1 A0`` (eq. 6 before the bias), ``(B, H1)``."""
        weight = self.input_layer.weight  # (P_range, H1)
        sharded = self.is_sharded
        if self.config.decay == "parametric":  # eqs. 5-6, fused decayed embedding-bag
            stop = self.stop if sharded else None
            return decayed_input(weight, batch, self.weights.ti, keep, self.start, stop, rows_view=self._rows_view)
        w = self.input_weights(batch)  # (nnz,)
        if self.config.decay == "learned":
            # w depends on the replicated kernel but each range uses only its own products'
            # entries: the gradient of w is summed over ranges so every kernel copy gets it all
            w = self.copy_to_parallel(w)
        if keep is not None:
            w = w * keep.to(w.dtype)
        if sharded:
            sel = (batch.item_idx >= self.start) & (batch.item_idx < self.stop)  # (nnz,)
            loc = local_batch(batch, self.start, self.stop)
            idx, offsets, w = loc.item_idx, loc.offsets, w[sel]
        else:
            idx, offsets = batch.item_idx, batch.offsets
        table, idx = self._rows_view(weight, idx)  # the input layer's embedding bag
        partial = F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=w,
                                  include_last_offset=True)
        if self.config.decay == "learned":
            base = self.copy_to_parallel(self.conv_act(self.conv_bias))  # Act(wb), every product
            partial = partial + base * weight.sum(dim=0)  # (H1,) broadcast
        return partial  # (B, H1)

    def forward(self, batch: SparseBatch | Mapping[str, Any]) -> torch.Tensor:
        """Sparse input -> second hidden layer ``(B, H2)`` (after dropout), the same in
        every range."""
        batch = SparseBatch.coerce(batch).to(self.input_layer.weight.device)
        batch.validate(self.num_items, "batch", need_days=self.config.decay != "none")
        keep = None  # xi, the masking input noise: (nnz,) bool, one draw for both input paths
        if self.training and self.config.input_noise > 0 and batch.nnz:
            keep = torch.rand(batch.nnz, device=batch.item_idx.device) >= self.config.input_noise
        pre1 = self.reduce_sum(self._input_partial(batch, keep)) + self.input_bias  # (B, H1)
        a1 = self.act(pre1)  # (B, H1)
        a2 = self.act(self.hidden_layer(self.dropout(a1)))  # (B, H2)
        hidden = self.dropout(a2)
        if self.config.sparsity_weight > 0:
            self._kl_cache = (hidden, [a1.mean(dim=0), a2.mean(dim=0)])
        return hidden

    def local_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of this range's products, ``(B, P_range)`` (all of them when unsharded)."""
        return self.output_layer(self.copy_to_parallel(hidden))

    def score(self, hidden: torch.Tensor, item_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Output logits ``W_L A + B_L`` (eq. 3 before the sigmoid).

        ``item_idx`` None: ``(B, P)`` (a range model gathers the ranges with ``gather``);
        1-D ``(K,)``: ``(B, K)`` for the same K products in every row; 2-D ``(B, K)``: per-row
        products, ``(B, K)`` (subsets need the whole-catalog model).
        """
        if item_idx is None:
            return self.gather(self.local_logits(hidden), 1)  # (B, P)
        if self.is_sharded:
            raise ValueError("score(hidden, item_idx) needs the whole-catalog model")
        item_idx = torch.as_tensor(item_idx, dtype=torch.long, device=hidden.device)
        if item_idx.numel() and (int(item_idx.min()) < 0 or int(item_idx.max()) >= self.num_items):
            raise ValueError(f"item_idx out of range [0, {self.num_items})")
        W, b = self.output_layer.weight, self.output_layer.bias
        if item_idx.dim() == 1:
            return hidden @ W[item_idx].T + b[item_idx]  # (B, K)
        if item_idx.dim() == 2 and item_idx.shape[0] == hidden.shape[0]:
            w_sel = W[item_idx]  # (B, K, H2)
            return torch.einsum("bh,bkh->bk", hidden, w_sel) + b[item_idx]  # (B, K)
        raise ValueError(f"item_idx must be (K,) or (B, K), got {tuple(item_idx.shape)}")

    def predict_proba(self, batch: SparseBatch | Mapping[str, Any]) -> torch.Tensor:
        """``Y_hat = Sigm(...)`` over all products, ``(B, P)`` (eq. 3)."""
        return torch.sigmoid(self.score(self.forward(batch)))

    # ---- loss -----------------------------------------------------------------------------
    def regularisation(self) -> torch.Tensor:
        """``lambda * sum_j |W_j|^2`` over the three weight matrices (eq. 3), all ranges."""
        if self.config.l2 == 0:
            return torch.zeros((), device=self.output_layer.weight.device)
        catalog = self.input_layer.weight.pow(2).sum() + self.output_layer.weight.pow(2).sum()
        return self.config.l2 * (self.reduce_sum(catalog) + self.hidden_layer.weight.pow(2).sum())

    def loss(
        self,
        hidden: torch.Tensor,
        targets: SparseBatch | Mapping[str, Any],
        inputs: SparseBatch | Mapping[str, Any],
    ) -> torch.Tensor:
        """Eq. 6: mean over customers of eq. 7's cost + L2 + beta * KL sparsity, the whole
        catalog's value in every range (eqs. 7-9 are sums over products: each range costs
        its own products and the costs are summed with ``reduce_sum``).

        ``hidden`` must come from the latest :meth:`forward` when ``sparsity_weight > 0``
        (the KL term uses that call's mean hidden activations).
        """
        targets = SparseBatch.coerce(targets).to(hidden.device)
        inputs = SparseBatch.coerce(inputs).to(hidden.device)
        targets.validate(self.num_items, "targets")
        inputs.validate(self.num_items, "inputs", need_days=self.weights.wa1 != 0)
        logits = self.local_logits(hidden)  # (B, P_range)
        if self.is_sharded:
            inputs = local_batch(inputs, self.start, self.stop)
            targets = local_batch(targets, self.start, self.stop)
        total = self.reduce_sum(combined_cost(logits, inputs, targets, self.weights).mean())
        total = total + self.regularisation()
        if self.config.sparsity_weight > 0:
            if self._kl_cache is None or self._kl_cache[0] is not hidden:
                raise ValueError(
                    "sparsity_weight > 0: pass the hidden tensor returned by the latest forward"
                )
            kl = sum(kl_sparsity(m, self.config.sparsity_target) for m in self._kl_cache[1])
            total = total + self.config.sparsity_weight * kl
        return total


def build_daily_nn(config: DailyNNConfig, num_items: int, seed: int = 0) -> DailyNN:
    """Registry builder: a fresh whole-catalog :class:`DailyNN` over ``num_items`` products
    (the layout every checkpoint holds)."""
    return DailyNN(num_items, config, seed=seed)


# --------------------------------------------------------------------------------------
# catalog clipping (section 3.1)
# --------------------------------------------------------------------------------------


def clip_catalog(
    counts: Mapping[Any, int] | Sequence[int] | np.ndarray | torch.Tensor, P: int
) -> list[Any] | np.ndarray:
    """The ``P`` most purchased products (section 3.1: the long tail is clipped).

    ``counts`` is either a mapping ``item id -> purchases`` (returns a list of ids) or an
    array indexed by item id (returns an ``int64`` array of indices).  The result is ordered
    by decreasing count, ties broken by ascending id (indices) or first appearance
    (mappings), so it is deterministic.  Raises ``ValueError`` when ``P`` is not positive or
    exceeds the number of items (no silent padding or shrinking).
    """
    if isinstance(counts, Mapping):
        keys = list(counts.keys())
        vals = np.asarray([counts[k] for k in keys], dtype=np.float64)
    else:
        keys = None
        vals = np.asarray(
            counts.detach().cpu().numpy() if isinstance(counts, torch.Tensor) else counts,
            dtype=np.float64,
        ).ravel()
    n = int(vals.size)
    if isinstance(P, bool) or int(P) != P or int(P) <= 0:
        raise ValueError(f"P must be a positive integer, got {P!r}")
    P = int(P)
    if P > n:
        raise ValueError(f"P={P} exceeds the number of items ({n})")
    if np.isnan(vals).any() or (vals < 0).any():
        raise ValueError("counts must be non-negative numbers")
    order = np.lexsort((np.arange(n), -vals))[:P]  # by -count, then index
    if keys is not None:
        return [keys[i] for i in order]
    return order.astype(np.int64)


class DailyNNTask:
    """The daily model's training (seed 000 section 3 and 5) under the model contract.

    Every rank sees every customer (tensor parallelism, section 5: "million of input and
    output dimensionalities"): under ``scaling.engine=tensor_parallel`` (or DeepSpeed with a
    model-parallel group) each rank holds the products ``env.item_range`` of the input table
    and the output layer, and the platform's collectives join the partial sums (the math is
    :class:`DailyNN`'s, written once).  A step is eq. 6: the mean over the batch's customers
    of the combined cost, plus L2 and the KL sparsity term.  The 33 parameters of the learned
    decay (eq. 4) form the parameter group ``decay`` (``optim.lr_multipliers.decay``).
    """

    parallelism = "tensor"
    #: ``decay`` exists only with ``model.decay: learned``; a shared config may still set
    #: ``optim.lr_multipliers.decay`` for every variant (the comparison table does)
    param_group_names = ("main", "decay")

    def __init__(self, job) -> None:
        self.cfg: DailyNNConfig = job.model
        self.shuffle = bool(job.train.shuffle)

    def build(self, env, generator: torch.Generator) -> nn.Module:
        start, stop = env.item_range or (0, env.n_items)
        model = DailyNN(env.n_items, self.cfg, seed=env.seed, start=start, stop=stop)
        model.reduce_sum, model.copy_to_parallel, model.gather = (
            env.reduce_sum, env.copy_to_parallel, env.gather)
        model.sparse_rows = env.sparse_rows
        return model

    def item_tables(self, module: nn.Module) -> list[nn.Parameter]:
        """The input table when its gradient can be row-sparse (a customer's purchases touch
        few products; :attr:`DailyNN.sparse_input_possible`)."""
        return [module.input_layer.weight] if module.row_sparse_input else []

    def item_state_dims(self, module: nn.Module) -> dict[str, int]:
        """Full-state keys of the catalog-wide tensors -> their product dim (``train.init_from``
        copies their rows by item id)."""
        return dict(DailyNN.catalog_dims)

    def param_groups(self, module: nn.Module, lr: float) -> list[dict]:
        named = list(module.named_parameters())
        groups = [{"name": "main", "params": [p for n, p in named if not n.startswith("conv_")]}]
        decay = [p for n, p in named if n.startswith("conv_")]
        if decay:
            groups.append({"name": "decay", "params": decay})
        return groups

    def num_batches(self, env, batch_size: int) -> int:
        return -(-env.train.n_users // batch_size)

    def batches(self, env, module: nn.Module, epoch: int, batch_size: int, rng):
        for _rows, inputs, targets in env.train.batches(batch_size, shuffle=self.shuffle, seed=env.seed + epoch):
            yield inputs, targets

    def loss(self, forward, batch, pad: bool = False) -> tuple[torch.Tensor, int]:
        inputs, targets = batch
        model = getattr(forward, "module", forward)  # the engine's module (DeepSpeed) or itself
        hidden = forward(inputs)  # (B, H2), identical on every rank
        return model.loss(hidden, targets, inputs), inputs.batch_size

    def evaluate(self, env, module: nn.Module, ks, batch_size: int) -> dict:
        return env.evaluate(module, env.valid, ks, batch_size)

    def full_state(self, env, module: nn.Module) -> dict[str, torch.Tensor]:
        return env.gather_state(module)

    def load_full_state(self, env, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        env.load_state(module, state)

    def epoch_metrics(self, env, module: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {"n_items": env.n_items}
        if self.cfg.decay == "learned":
            out["learned_decay"] = [float(x) for x in module.learned_decay_curve()]
        return out


def _register() -> None:
    try:
        from rayrec.models import registry
    except ImportError:  # pragma: no cover - registry always ships with rayrec.models
        return
    registry.register(registry.ModelSpec(
        name="daily_nn", config_cls=DailyNNConfig, build=build_daily_nn, kind="daily",
        task=DailyNNTask, parallelism="tensor", default_config="daily_ml100k_train.yaml",
        job_defaults={
            "optim": {"name": "adam", "lr": 1e-3, "eps": 1e-8, "momentum": 0.0},
            "data": {"path": "outputs/ml-100k", "train_split": "train", "valid_split": "valid_test",
                     "test_split": "test"},
            "train": {"epochs": 20, "batch_size": 64, "shuffle": True},
            "eval": {"ks": [1, 5, 10], "batch_size": 256},
            "scaling": {"engine": "tensor_parallel"},
            "ray": {"use_ray": False},  # small catalogs train fastest in-process
        },
    ))


_register()

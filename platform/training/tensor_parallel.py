"""Tensor parallelism for catalog-sized models (seed 000, section 5).

**Sharding a model** (TorchRec-style: the model file holds one single-device definition of
the math; distribution is a transformation of it, and checkpoints always hold the unsharded
layout).  A shardable module declares its catalog-wide parameters and the product range it
holds:

* ``catalog_dims: Mapping[str, int]``: parameter (state-dict) names, relative to the module,
  -> the dimension that runs over products;
* ``catalog_range: tuple[int, int]``: ``[start, stop)``, the products this rank holds (a
  contiguous :func:`shard_range` slice, ranks in order);
* ``num_items``: the whole catalog's size;
* the hooks ``reduce_sum(t)``, ``copy_to_parallel(t)`` and ``gather(t, dim)`` (identity on
  one device), which :func:`install_collectives` replaces with this module's collectives.

:func:`shard_daily_nn` builds rank ``rank``'s slice of ``rayrec.models.daily_nn.DailyNN``
and installs the collectives; :func:`full_state` gathers any such module (or a module that
contains some) into the unsharded state dict on every rank, and :func:`load_full_state`
slices an unsharded state dict into this rank's module.  Both are driven by
``catalog_dims`` only, so other models can reuse them.

**Building blocks.**  Seed 000 trains networks "with million of input and output
dimensionalities" by model parallelism (DSSTNE, section 5): the ``[H, P]`` output matrix
``W_L`` of eq. 3 does not fit comfortably on one worker, so it is split by columns (products)
across ``world_size`` ranks.  Every rank holds the full (small) hidden layers, sees the same
batch, and computes the logits of its own contiguous slice of products ``[start, stop)``:

* :func:`copy_to_parallel` (identity, gradient all-reduced), :func:`all_reduce_sum`
  (all-reduce, gradient passed through) and :func:`gather_cat` (all-gather along a dim,
  gradient sliced): the collectives the hooks use.

* :class:`ColumnParallelOutput` holds only its shard ``W[:, start:stop]`` ``(H, P_local)``.
  Its forward is the identity on the hidden input followed by the local product; the
  identity all-reduces the input's gradient in backward, so every rank gets the full
  ``dL/dA_(L-1)`` (the sum over all shards) and the replicated hidden layers stay in step.
* :func:`parallel_weighted_bce` evaluates eq. 3's weighted cross-entropy on the local columns
  and all-reduces the sum, so every rank holds the full loss; its backward passes the
  gradient through unchanged (each local term enters the global sum once).
* :func:`parallel_topk` takes a local top-k, all-gathers the candidates and merges them:
  the global top-k with *global* product ids, previous purchases excluded (section 5).

Shards follow ``numpy.array_split``: the first ``P % world_size`` ranks get one extra
column.  Collectives use ``torch.distributed`` (gloo on CPU, any backend in general) and the
default process group unless ``group`` is given; ``world_size == 1`` needs no process group.
This module does not start Ray: the training job wires it into Ray Train / DeepSpeed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rayrec.models.daily_nn import DailyNN, DailyNNConfig, SparseBatch

__all__ = [
    "ColumnParallelOutput",
    "all_reduce_sum",
    "copy_to_parallel",
    "full_state",
    "gather_cat",
    "install_collectives",
    "load_full_state",
    "parallel_topk",
    "parallel_weighted_bce",
    "shard_daily_nn",
    "shard_parameter_bytes",
    "shard_range",
]


def shard_range(P: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s columns (array_split: the first ranks take the rest)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if P < world_size:
        raise ValueError(f"P={P} is smaller than world_size={world_size}: a shard would be empty")
    base, extra = divmod(P, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _world(group: Any) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class _CopyToParallel(torch.autograd.Function):
    """Identity forward; all-reduce (sum) of the gradient in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        if _world(ctx.group) > 1:
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class _AllReduceSum(torch.autograd.Function):
    """All-reduce (sum) forward; the gradient passes through unchanged.

    ``L = sum_r l_r`` so ``dL/dl_r = 1`` on rank ``r``: each rank back-propagates the
    upstream gradient into its own term only (reducing it again would count it world_size
    times).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        out = x.contiguous().clone()
        if _world(group) > 1:
            dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _GatherCat(torch.autograd.Function):
    """Concatenation of every rank's tensor along ``dim`` (sizes may differ by rank);
    backward keeps this rank's slice of the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int, group: Any) -> torch.Tensor:
        world = _world(group)
        dim = dim % x.dim()
        ctx.dim = dim
        if world == 1:
            ctx.offset, ctx.size = 0, x.shape[dim]
            return x.view_as(x)
        n = torch.tensor([x.shape[dim]], dtype=torch.long, device=x.device)
        sizes = [int(s) for s in _all_gather(n, group, world)]
        rank = dist.get_rank(group)
        ctx.offset, ctx.size = sum(sizes[:rank]), sizes[rank]
        width = max(sizes)
        x = x.contiguous()
        if x.shape[dim] < width:
            pad = list(x.shape)
            pad[dim] = width - x.shape[dim]
            x = torch.cat([x, x.new_zeros(pad)], dim=dim)
        parts = _all_gather(x, group, world)
        return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad.narrow(ctx.dim, ctx.offset, ctx.size), None, None


def gather_cat(x: torch.Tensor, dim: int = 0, group: Any = None) -> torch.Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order (shards may be uneven);
    every rank gets the result.  Differentiable: backward returns this rank's slice."""
    return _GatherCat.apply(x, dim, group)


def copy_to_parallel(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Identity whose backward all-reduces the gradient across the group."""
    return _CopyToParallel.apply(x, group)


def all_reduce_sum(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Differentiable all-reduce sum whose backward is the identity (see ``_AllReduceSum``)."""
    return _AllReduceSum.apply(x, group)


class ColumnParallelOutput(nn.Module):
    """One rank's column shard of the ``[H, P]`` output layer of eq. 3.

    ``weight`` is ``(H, P_local)`` and ``bias`` ``(P_local,)`` for the products
    ``[start, stop)``; ``forward(hidden (B, H)) -> local logits (B, P_local)``.  The shard is
    initialised like ``nn.Linear`` (uniform in ``+-1/sqrt(H)``) from ``seed + rank`` when a
    seed is given; :meth:`load_full_` copies the shard out of a full matrix instead.
    """

    def __init__(
        self,
        H: int,
        P: int,
        rank: int,
        world_size: int,
        *,
        bias: bool = True,
        group: Any = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if H <= 0 or P <= 0:
            raise ValueError(f"H and P must be positive, got H={H}, P={P}")
        self.H, self.P, self.rank, self.world_size = int(H), int(P), int(rank), int(world_size)
        self.start, self.stop = shard_range(self.P, self.rank, self.world_size)
        self.group = group
        p_local = self.stop - self.start
        self.weight = nn.Parameter(torch.empty(self.H, p_local, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(p_local, dtype=dtype, device=device)) if bias else None
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.weight.device).manual_seed(int(seed) + self.rank)
        bound = 1.0 / math.sqrt(self.H)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound, generator=gen)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound, generator=gen)

    @property
    def local_size(self) -> int:
        return self.stop - self.start

    def extra_repr(self) -> str:
        return (
            f"H={self.H}, P={self.P}, rank={self.rank}/{self.world_size}, "
            f"columns=[{self.start}, {self.stop})"
        )

    @torch.no_grad()
    def load_full_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Copy this rank's columns out of a full ``(H, P)`` weight and ``(P,)`` bias."""
        if tuple(weight.shape) != (self.H, self.P):
            raise ValueError(f"weight must be ({self.H}, {self.P}), got {tuple(weight.shape)}")
        self.weight.copy_(weight[:, self.start : self.stop])
        if bias is not None and self.bias is not None:
            if tuple(bias.shape) != (self.P,):
                raise ValueError(f"bias must be ({self.P},), got {tuple(bias.shape)}")
            self.bias.copy_(bias[self.start : self.stop])

    def _check_group(self) -> None:
        if self.world_size > 1 and _world(self.group) != self.world_size:
            raise RuntimeError(
                f"ColumnParallelOutput(world_size={self.world_size}) needs an initialised "
                f"torch.distributed process group of that size (found {_world(self.group)})"
            )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden (B, H) -> local logits (B, P_local)``; input grads are all-reduced."""
        self._check_group()
        if hidden.shape[-1] != self.H:
            raise ValueError(f"hidden has {hidden.shape[-1]} features, expected H={self.H}")
        x = copy_to_parallel(hidden, self.group)
        out = x @ self.weight  # (B, P_local)
        return out + self.bias if self.bias is not None else out

    def local_targets(
        self, targets: SparseBatch | Sequence[Iterable[int]], dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Dense ``(B, P_local)`` 0/1 targets of this shard from global-id purchase sets."""
        return _local_mask(
            targets, self.start, self.stop, dtype or self.weight.dtype, self.weight.device
        )

    def topk(
        self, local_logits: torch.Tensor, k: int, exclude: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`parallel_topk` with this shard's offset."""
        return parallel_topk(local_logits, k, exclude, start=self.start, group=self.group)


def _local_mask(
    rows: SparseBatch | Sequence[Iterable[int]],
    start: int,
    stop: int,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Dense ``(B, stop - start)`` indicator of the global ids in ``rows`` within the shard."""
    if isinstance(rows, SparseBatch):
        r, ids = rows.row_ids(), rows.item_idx
        B = rows.batch_size
    else:
        rows = [list(x) for x in rows]
        B = len(rows)
        r = torch.tensor([b for b, x in enumerate(rows) for _ in x], dtype=torch.long)
        ids = torch.tensor([int(i) for x in rows for i in x], dtype=torch.long)
    out = torch.zeros(B, stop - start, dtype=dtype, device=device)
    r, ids = r.to(out.device), ids.to(out.device)
    keep = (ids >= start) & (ids < stop)
    out[r[keep], ids[keep] - start] = 1
    return out


def parallel_weighted_bce(
    local_logits: torch.Tensor,
    local_targets: torch.Tensor,
    w1: float,
    w0: float,
    *,
    group: Any = None,
) -> torch.Tensor:
    """Eq. 3's weighted cross-entropy over all ``P`` products, reduced across ranks.

    ``-sum_p [w1 y_p log sigm(z_p) + w0 (1 - y_p) log(1 - sigm(z_p))]`` per customer, mean
    over the batch (the same reduction as ``DailyNN.loss``).  ``local_targets (B, P_local)``
    may be fractional (e.g. time-decayed auto-encoder labels).  Every rank returns the full
    loss; backward gives each rank the gradient of its own columns.
    """
    if local_logits.shape != local_targets.shape:
        raise ValueError(
            f"local_logits {tuple(local_logits.shape)} and local_targets "
            f"{tuple(local_targets.shape)} differ"
        )
    y = local_targets.to(local_logits.dtype)
    z = local_logits
    # -log sigm(z) = softplus(-z); -log(1 - sigm(z)) = softplus(z)
    per = w1 * y * nn.functional.softplus(-z) + w0 * (1 - y) * nn.functional.softplus(z)
    local = per.sum() / max(z.shape[0], 1)
    return all_reduce_sum(local, group)


def parallel_topk(
    local_logits: torch.Tensor,
    k: int,
    exclude: torch.Tensor | SparseBatch | Sequence[Iterable[int]] | None = None,
    *,
    start: int | None = None,
    group: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global top-``k`` ``(values (B, k), ids (B, k))`` from column-sharded logits.

    ``exclude``: a local boolean mask ``(B, P_local)``, or per-row *global* ids (a
    ``SparseBatch`` or a list of iterables), e.g. the customer's previous purchases, which
    are never returned.  ``start`` is this rank's first global column; when omitted it is
    derived by all-gathering the shard widths (array_split order by rank).  Where a row has
    fewer than ``k`` eligible products (or ``k > P``) the tail is ``(-inf, -1)``.  Every
    rank returns the same result; ties between equal scores are broken arbitrarily.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    world = _world(group)
    B, p_local = local_logits.shape  # (B, P_local)
    if start is None:
        sizes = _all_gather(
            torch.tensor([p_local], dtype=torch.long, device=local_logits.device), group, world
        )
        rank = dist.get_rank(group) if world > 1 else 0
        start = int(sum(int(s) for s in sizes[:rank]))
    scores = local_logits.detach()
    if exclude is not None:
        if isinstance(exclude, torch.Tensor):
            if exclude.shape != scores.shape:
                raise ValueError(
                    f"exclude mask {tuple(exclude.shape)} must match local_logits "
                    f"{tuple(scores.shape)}"
                )
            mask = exclude.to(torch.bool)
        else:
            mask = _local_mask(exclude, start, start + p_local, torch.bool, scores.device)
            if mask.shape[0] != B:
                raise ValueError(f"exclude has {mask.shape[0]} rows, local_logits {B}")
        scores = scores.masked_fill(mask, -math.inf)
    kl = min(k, p_local)
    vals, idx = torch.topk(scores, kl, dim=1)  # (B, kl)
    ids = idx + start
    if kl < k:  # pad so every rank contributes (B, k)
        vals = torch.cat([vals, vals.new_full((B, k - kl), -math.inf)], dim=1)
        ids = torch.cat([ids, ids.new_full((B, k - kl), -1)], dim=1)
    if world > 1:
        all_vals = torch.cat(_all_gather(vals.contiguous(), group, world), dim=1)  # (B, W*k)
        all_ids = torch.cat(_all_gather(ids.contiguous(), group, world), dim=1)
    else:
        all_vals, all_ids = vals, ids
    top_vals, pos = torch.topk(all_vals, k, dim=1)  # (B, k)
    top_ids = torch.gather(all_ids, 1, pos)
    top_ids = top_ids.masked_fill(torch.isneginf(top_vals), -1)
    return top_vals, top_ids


def _all_gather(t: torch.Tensor, group: Any, world: int) -> list[torch.Tensor]:
    if world == 1:
        return [t]
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t, group=group)
    return out


def shard_parameter_bytes(module: nn.Module) -> int:
    """Bytes held by ``module``'s parameters on this rank (for the per-rank memory check)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


# ------------------------------------------------------------------------------------------
# sharding a model by product range
# ------------------------------------------------------------------------------------------


def install_collectives(module: nn.Module, group: Any = None) -> nn.Module:
    """Replace ``module``'s (and its submodules') ``reduce_sum``, ``copy_to_parallel`` and
    ``gather`` hooks with the autograd-aware collectives of ``group`` (default group when
    None): :func:`all_reduce_sum`, :func:`copy_to_parallel`, :func:`gather_cat`."""
    for _, sub in _catalog_modules(module):
        sub.reduce_sum = partial(all_reduce_sum, group=group)
        sub.copy_to_parallel = partial(copy_to_parallel, group=group)
        sub.gather = partial(gather_cat, group=group)
    return module


def shard_daily_nn(
    config: DailyNNConfig, num_items: int, rank: int = 0, world: int = 1, seed: int = 0,
    group: Any = None,
) -> DailyNN:
    """Rank ``rank``'s slice of the daily network: ``DailyNN`` over the products
    :func:`shard_range` gives this rank, initialised to exactly those rows of the
    whole-catalog model with the same ``seed``, with the collectives installed.

    ``world == 1`` returns the plain whole-catalog model (identity hooks, no process group
    needed); ``world > 1`` needs an initialised ``torch.distributed`` group of that size, and
    every rank must then run the same batches under the same torch RNG state."""
    if world > 1 and _world(group) != world:
        raise RuntimeError(
            f"shard_daily_nn(world={world}) needs an initialised torch.distributed process "
            f"group of that size (found {_world(group)})"
        )
    start, stop = shard_range(int(num_items), int(rank), int(world))
    model = DailyNN(num_items, config, seed=seed, start=start, stop=stop)
    if world > 1:
        install_collectives(model, group)
    return model


def _catalog_modules(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(state-dict prefix, submodule)`` of every submodule that declares ``catalog_dims``."""
    for name, sub in module.named_modules():
        if getattr(sub, "catalog_dims", None) is not None:
            yield (f"{name}." if name else ""), sub


def _sharded_keys(module: nn.Module) -> Iterator[tuple[str, int, nn.Module]]:
    """``(state-dict key, catalog dim, owner)`` of every catalog-wide tensor, in a fixed order
    (the same on every rank)."""
    for prefix, sub in _catalog_modules(module):
        for key, dim in sub.catalog_dims.items():
            yield prefix + key, int(dim), sub


def full_state(module: nn.Module, group: Any = None) -> dict[str, torch.Tensor]:
    """The unsharded state dict of ``module`` (detached copies): the catalog-wide tensors
    of sharded submodules are gathered along their catalog dim across ranks, the rest is
    this rank's (replicated) copy.  A collective when ``module`` is sharded: call it on every
    rank; every rank gets the full state."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for key, dim, sub in _sharded_keys(module):
        if not sub.is_sharded:
            continue
        if key not in state:
            raise KeyError(f"catalog_dims names {key!r}, which is not in the state dict")
        full = gather_cat(state[key], dim, group)
        if full.shape[dim] != sub.num_items:
            raise RuntimeError(
                f"gathered {key!r} covers {full.shape[dim]} products along dim {dim}, "
                f"expected {sub.num_items}: the ranks' product ranges do not tile the catalog"
            )
        state[key] = full
    return state


def load_full_state(module: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Load an unsharded state dict (a checkpoint's) into ``module``: every catalog-wide
    tensor is sliced to the submodule's ``catalog_range`` along its catalog dim first.
    ``ValueError`` names a tensor whose catalog dim is not the whole catalog."""
    local = dict(state)
    for key, dim, sub in _sharded_keys(module):
        if key not in local:
            continue  # load_state_dict(strict=...) reports it
        full = local[key]
        if full.dim() <= dim or full.shape[dim] != sub.num_items:
            raise ValueError(
                f"{key!r} has shape {tuple(full.shape)}: dim {dim} must hold the whole "
                f"catalog of {sub.num_items} products"
            )
        start, stop = sub.catalog_range
        local[key] = full.narrow(dim, start, stop - start)
    module.load_state_dict(local, strict=strict)

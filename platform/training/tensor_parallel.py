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

  The daily model's input table rows and output layer columns are split this way
  (``rayrec.models.daily_nn.DailyNN`` over a product range); eqs. 7-9 are sums over
  products, so each rank's partial cost is joined with :func:`all_reduce_sum`, and a
  catalog-wide top-K gathers the ranges' logits (:func:`gather_cat`).

Shards follow ``numpy.array_split``: the first ``P % world_size`` ranks get one extra
column.  Collectives use ``torch.distributed`` (gloo on CPU, any backend in general) and the
default process group unless ``group`` is given; ``world_size == 1`` needs no process group.
This module does not start Ray: the training job wires it into Ray Train / DeepSpeed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rayrec.models.daily_nn import DailyNN, DailyNNConfig

__all__ = [
    "all_reduce_sum",
    "copy_to_parallel",
    "full_state",
    "gather_cat",
    "install_collectives",
    "load_full_state",
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

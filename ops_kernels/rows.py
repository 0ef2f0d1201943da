"""Row lookups with a row-sparse gradient: the item tables' side of catalog-scale training.

A sampled recommender step reads a few rows of its item tables (the mini-batch's input items,
its target and negative columns). ``table.index_select(0, idx)`` back-propagates a dense
``(N, ...)`` gradient: allocating, zeroing and updating it costs ``O(N H)`` per step, which
dominates at 10^5-10^7 items. :func:`gather_rows` returns the same rows but its gradient is a
sparse COO tensor holding only the touched rows, so the optimiser can update those rows alone
(``rayrec.platform.training.optim``) and data-parallel ranks can exchange only them.

The gradient arrives *coalesced* (each touched row once, rows sorted): the lookup takes the
unique rows ``R`` of the step (one sort of the ``n`` indices), gathers the ``(|R|, ...)`` block
once and indexes into it, so duplicates are summed by the dense backward of that small
indexing (``O(n H)``) instead of by a sparse ``coalesce`` (a sort of the ``n`` indices *and*
a scatter of the values, measured at ~4x the cost on CPU). Every lookup of one table in a step
should go through one call (:func:`gather_rows_multi`): two calls give two sparse gradients
whose sum is no longer coalesced.

Works for tables of any rank >= 1 (a ``(N,)`` bias, a ``(N, H)`` embedding), on any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_rows", "gather_rows", "gather_rows_multi", "gather_unique_rows", "sparse_grad_rows"]


def check_rows(idx: torch.Tensor, n_rows: int, name: str = "table") -> None:
    """Raise ``IndexError`` naming the first index of ``idx`` outside ``[0, n_rows)`` and its
    position (before any step uses it: a bad item index must never reach an update)."""
    if idx.numel() == 0:
        return
    lo, hi = torch.aminmax(idx)
    if int(lo) >= 0 and int(hi) < n_rows:
        return
    bad = ((idx < 0) | (idx >= n_rows)).nonzero()[0]
    pos = tuple(int(p) for p in bad)
    raise IndexError(
        f"item index {int(idx[pos])} at position {pos[0] if len(pos) == 1 else pos} is outside "
        f"{name} ({n_rows} rows, valid 0..{n_rows - 1})")


class _GatherUnique(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.table_shape = table.shape
        ctx.save_for_backward(rows)
        return table.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rows,) = ctx.saved_tensors
        g = torch.sparse_coo_tensor(rows.unsqueeze(0), grad.contiguous(), ctx.table_shape,
                                    is_coalesced=True, check_invariants=False)  # rows checked
        return g, None


def sparse_grad_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, values)`` of a row-sparse gradient: each row once, sorted, duplicates summed.

    Autograd's gradient accumulation rebuilds a sparse gradient without its coalesced flag, so
    the flag alone cannot tell that the lookups above already produced unique sorted rows.
    Strictly increasing rows are checked in one ``O(n)`` pass and used as they are; anything
    else (several lookups of one table, rows gathered from data-parallel ranks) is coalesced."""
    idx = grad._indices()[0]
    if grad.is_coalesced() or idx.numel() < 2 or bool((idx[1:] > idx[:-1]).all()):
        return idx, grad._values()
    g = grad.coalesce()
    return g.indices()[0], g.values()


def gather_unique_rows(table: torch.Tensor, rows: torch.Tensor, name: str = "table") -> torch.Tensor:
    """``table[rows]`` for sorted, unique ``rows`` (e.g. from ``torch.unique``), its gradient a
    coalesced row-sparse tensor over ``rows`` (the caller guarantees order and uniqueness)."""
    if rows.dim() != 1:
        raise ValueError(f"{name}: row indices must be 1-D, got shape {tuple(rows.shape)}")
    check_rows(rows, table.shape[0], name)
    if table.requires_grad and torch.is_grad_enabled():
        return _GatherUnique.apply(table, rows)
    return table.index_select(0, rows)


def gather_rows_multi(table: torch.Tensor, idxs: Sequence[torch.Tensor], sparse_grad: bool = True,
                      name: str = "table") -> list[torch.Tensor]:
    """``[table[i] for i in idxs]`` (1-D long indices, checked first, :func:`check_rows`) with
    one coalesced row-sparse gradient over all of them (module docstring). Without
    ``sparse_grad`` (e.g. under DeepSpeed, whose ZeRO partitions take dense gradients only),
    or without autograd, these are plain ``index_select`` lookups."""
    for i in idxs:
        if i.dim() != 1:
            raise ValueError(f"{name}: row indices must be 1-D, got shape {tuple(i.shape)}")
    if not (sparse_grad and table.requires_grad and torch.is_grad_enabled()):
        for i in idxs:
            check_rows(i, table.shape[0], name)
        return [table.index_select(0, i) for i in idxs]
    flat = idxs[0] if len(idxs) == 1 else torch.cat(list(idxs))
    check_rows(flat, table.shape[0], name)
    rows, inv = torch.unique(flat, sorted=True, return_inverse=True)
    block = _GatherUnique.apply(table, rows).index_select(0, inv)  # (sum n_i, ...)
    return list(block.split([int(i.numel()) for i in idxs]))


def gather_rows(table: torch.Tensor, idx: torch.Tensor, sparse_grad: bool = True,
                name: str = "table") -> torch.Tensor:
    """``table[idx]`` for a 1-D long ``idx`` (``(n, *table.shape[1:])``): one lookup of
    :func:`gather_rows_multi`."""
    return gather_rows_multi(table, [idx], sparse_grad, name)[0]

"""Row lookups with a row-sparse gradient: the item tables' side of catalog-scale training.

A sampled recommender step reads a few rows of its item tables (the mini-batch's input items,
its target and negative columns). ``table.index_select(0, idx)`` back-propagates a dense
``(N, ...)`` gradient: allocating, zeroing and updating it costs ``O(N H)`` per step, which
dominates at 10^5-10^7 items. :func:`gather_rows` returns the same rows but its gradient is a
sparse COO tensor holding only the looked-up rows (``indices (1, n)``, ``values (n, ...)``,
duplicates not yet summed), so the optimiser can update the touched rows alone
(``rayrec.platform.training.optim``) and data-parallel ranks can exchange only those rows.

Works for tables of any rank >= 1 (a ``(N,)`` bias, a ``(N, H)`` embedding), on any device;
the backward is one ``sparse_coo_tensor`` construction (no kernel to fuse).
"""

from __future__ import annotations

import torch

__all__ = ["check_rows", "gather_rows"]


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


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.table_shape = table.shape
        ctx.save_for_backward(idx)
        return table.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        g = torch.sparse_coo_tensor(idx.unsqueeze(0), grad.contiguous(), ctx.table_shape,
                                    is_coalesced=False, check_invariants=False)  # idx checked
        return g, None


def gather_rows(table: torch.Tensor, idx: torch.Tensor, sparse_grad: bool = True,
                name: str = "table") -> torch.Tensor:
    """``table[idx]`` for a 1-D long ``idx`` (``(n, *table.shape[1:])``), the indices checked
    first (:func:`check_rows`). With ``sparse_grad`` the gradient that reaches ``table`` is
    row-sparse (see module docstring); otherwise this is ``index_select`` (dense gradient, e.g.
    under DeepSpeed, whose ZeRO partitions take dense gradients only)."""
    if idx.dim() != 1:
        raise ValueError(f"{name}: row indices must be 1-D, got shape {tuple(idx.shape)}")
    check_rows(idx, table.shape[0], name)
    if sparse_grad and table.requires_grad and torch.is_grad_enabled():
        return _GatherRows.apply(table, idx)
    return table.index_select(0, idx)

"""Data-parallel exchange of row-sparse item-table gradients (catalog-scale training).

DistributedDataParallel all-reduces every gradient densely: ``N x H`` per item table per step,
whatever the step touched.  The item tables (``TrainTask.item_tables``) are therefore kept out
of DDP (:func:`ddp_ignore`) and :func:`sync_item_grads` exchanges only their touched rows:

1. each rank coalesces its row-sparse gradient (unique rows ``R_k``, summed values);
2. one ``all_gather`` of every table's row count (and whether any rank holds a dense gradient);
3. per table, ``all_gather`` of the (padded) row ids and row values; the padding is dropped,
   the ranks' rows are concatenated and divided by the world size -- DDP's averaging -- as one
   uncoalesced sparse gradient.  The optimiser sums duplicate rows when it coalesces, so every
   rank applies the same indexed update to the same rows (ranks stay identical).

A table whose gradient is dense on some rank (e.g. a full-catalog softmax) is all-reduced
densely on every rank that step.  Traffic per step: ``world * max_k R_k * (H + 1)`` numbers per
table instead of ``N * H``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from rayrec.ops_kernels import sparse_grad_rows

__all__ = ["ddp_ignore", "sync_item_grads"]


def ddp_ignore(module: nn.Module, tables: Sequence[nn.Parameter]) -> list[str]:
    """Mark ``tables`` (parameters of ``module``) as ignored by a DistributedDataParallel built
    on ``module`` afterwards; returns their names."""
    ids = {id(t) for t in tables}
    names = [n for n, p in module.named_parameters() if id(p) in ids]
    if len(names) != len(ids):
        raise ValueError("item_tables must be parameters of the module the engine wraps")
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
    return names


def _local_rows(p: nn.Parameter) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rows, values) of ``p``'s row-sparse gradient, coalesced; None for a dense gradient."""
    g = p.grad
    if g is None:
        return (torch.empty(0, dtype=torch.long, device=p.device),
                torch.empty((0, *p.shape[1:]), dtype=p.dtype, device=p.device))
    if not g.is_sparse:
        return None
    return sparse_grad_rows(g)


@torch.no_grad()
def sync_item_grads(tables: Sequence[nn.Parameter], world: int, group=None) -> None:
    """Replace every table's gradient by the mean over the ``world`` data-parallel ranks, moving
    only touched rows (module docstring).  Collective: every rank calls it after backward with
    the same tables in the same order."""
    if world == 1 or not tables:
        return
    local = [_local_rows(p) for p in tables]
    dev = tables[0].device
    counts = torch.tensor([[-1 if lr is None else int(lr[0].numel()) for lr in local]],
                          dtype=torch.int64, device=dev)  # (1, T); -1: dense
    all_counts = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(all_counts, counts, group=group)
    table_counts = torch.cat(all_counts).cpu()  # (world, T)
    for j, p in enumerate(tables):
        col = table_counts[:, j]
        if bool((col < 0).any()):  # some rank holds a dense gradient: all-reduce densely
            g = p.grad.to_dense() if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(g, group=group)
            p.grad = g.div_(world)
            continue
        rows, vals = local[j]
        width = int(col.max())
        if width == 0:
            p.grad = None
            continue
        r_pad = torch.zeros(width, dtype=torch.long, device=dev)
        v_pad = torch.zeros((width, *p.shape[1:]), dtype=vals.dtype, device=dev)
        r_pad[: rows.numel()] = rows
        v_pad[: rows.numel()] = vals
        r_all = [torch.empty_like(r_pad) for _ in range(world)]
        v_all = [torch.empty_like(v_pad) for _ in range(world)]
        dist.all_gather(r_all, r_pad, group=group)
        dist.all_gather(v_all, v_pad, group=group)
        keep = [int(c) for c in col]
        rows_cat = torch.cat([r[:k] for r, k in zip(r_all, keep)])
        vals_cat = torch.cat([v[:k] for v, k in zip(v_all, keep)]).div_(world)
        p.grad = torch.sparse_coo_tensor(rows_cat.unsqueeze(0), vals_cat, p.shape, is_coalesced=False,
                                         check_invariants=False)

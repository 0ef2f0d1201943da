"""Fused linear cross-entropy over the catalog (full softmax and sampled variants).

Public entry points: :func:`linear_cross_entropy` and :func:`sampled_linear_cross_entropy`.
Both dispatch through ``RAYREC_KERNELS`` (see ``rayrec.ops_kernels._dispatch``).
"""

from __future__ import annotations

import torch

from rayrec.ops_kernels._dispatch import resolve_backend
from rayrec.ops_kernels.linear_ce.reference import linear_ce_reference

__all__ = ["linear_cross_entropy", "sampled_linear_cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_common(hidden, weight, bias, log_q, reduction, n_cols):
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be (B, D), got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must be (N, D) with D={hidden.shape[1]}, got shape {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be (N,)=({weight.shape[0]},), got {tuple(bias.shape)}")
    if log_q is not None and tuple(log_q.shape) != (n_cols,):
        raise ValueError(f"log_q must be ({n_cols},), got {tuple(log_q.shape)}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.mean() if per_row.numel() else per_row.sum() * 0.0


def _run(hidden, weight, bias, pos, adj, col_items, nb, mask_samples, chunk, backend):
    which = resolve_backend("linear_cross_entropy", hidden.device, backend)
    if which == "triton":
        from rayrec.ops_kernels.linear_ce.triton_impl import linear_ce_triton

        return linear_ce_triton(hidden, weight, bias, pos, adj, col_items, nb, mask_samples)
    return linear_ce_reference(hidden, weight, bias, pos, adj, col_items, nb, mask_samples, chunk)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
    logq: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Full-softmax cross-entropy of ``hidden @ weight.T + bias`` without the ``(B, N)`` logits.

    hidden (B, D); weight (N, D) item weights; targets (B,) long in [0, N); bias (N,) or None;
    log_q (N,) optional log sampling probability of each item, subtracted as
    ``logq * log_q`` from the logits (the logQ correction; 0 or None = off).
    Returns the mean (``reduction``) of ``-log softmax(z_i)[targets_i]``; differentiable in
    hidden, weight and bias. ``chunk_size``: columns per chunk of the reference path
    (default: ~4M logits per chunk).
    """
    n = weight.shape[0] if weight.dim() == 2 else -1
    _check_common(hidden, weight, bias, log_q, reduction, n)
    if n <= 0:
        raise ValueError("weight must have at least one item row (N >= 1)")
    targets = torch.as_tensor(targets, device=hidden.device).long()
    if tuple(targets.shape) != (hidden.shape[0],):
        raise ValueError(f"targets must be (B,)=({hidden.shape[0]},), got {tuple(targets.shape)}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n):
        raise ValueError(f"targets out of range [0, {n})")
    adj = None
    if log_q is not None and logq > 0.0:
        adj = (float(logq) * log_q.detach().float()).contiguous()
    per_row = _run(hidden, weight, bias, targets, adj, None, 0, True, chunk_size, backend)
    return _reduce(per_row, reduction)


def sampled_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    cols: torch.Tensor,
    bias: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
    logq: float = 1.0,
    mask_hits: bool = True,
    mask_sample_hits: bool = True,
    reduction: str = "mean",
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Sampled softmax of GRU4Rec over the columns ``cols`` = (B targets, S shared negatives).

    Equals ``rayrec.models.losses.cross_entropy(hidden @ weight[cols].T + bias[cols],
    valid, log_q, logq)`` with ``valid = negative_mask(cols[:B], cols, mask_sample_hits)``
    when ``mask_hits`` (accidental hits leave the partition; seed 003 section 3.1.2) and
    ``valid=None`` (no masking) otherwise, without materialising the ``(B, B + S)`` block.
    log_q is per column, (B + S,).
    """
    cols = torch.as_tensor(cols, device=hidden.device).long()
    c = cols.shape[0] if cols.dim() == 1 else -1
    _check_common(hidden, weight, bias, log_q, reduction, c)
    bsz = hidden.shape[0]
    if cols.dim() != 1 or c < bsz:
        raise ValueError(f"cols must be (B + S,) with B={bsz} targets first, got {tuple(cols.shape)}")
    if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= weight.shape[0]):
        raise ValueError(f"cols out of range [0, {weight.shape[0]})")
    if c == 0:
        return _reduce(hidden.new_zeros(0, dtype=torch.float32), reduction)
    w = weight.index_select(0, cols)  # (C, D)
    b = None if bias is None else bias.index_select(0, cols)  # (C,)
    adj = None
    if log_q is not None and logq > 0.0:
        adj = (float(logq) * log_q.detach().float()).contiguous()
    pos = torch.arange(bsz, device=hidden.device)
    col_items = cols.contiguous() if mask_hits else None
    per_row = _run(hidden, w, b, pos, adj, col_items, bsz, mask_sample_hits, chunk_size, backend)
    return _reduce(per_row, reduction)

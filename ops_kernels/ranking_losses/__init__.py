"""Fused sampled ranking losses of GRU4Rec over the (B, B + S) score block.

Public entry point: :func:`sampled_ranking_loss` (BPR-max, TOP1-max, cross-entropy + logQ).
"""

from __future__ import annotations

import torch

from rayrec.ops_kernels._dispatch import resolve_backend
from rayrec.ops_kernels.ranking_losses.reference import LOSSES, ranking_loss_reference

__all__ = ["LOSSES", "sampled_ranking_loss"]


def sampled_ranking_loss(
    scores: torch.Tensor,
    loss: str,
    cols: torch.Tensor | None = None,
    mask_sample_hits: bool = True,
    bpreg: float = 1.0,
    log_q: torch.Tensor | None = None,
    logq: float = 1.0,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """``loss`` in ``("bpr-max", "top1-max", "cross-entropy")`` over ``scores (B, B + S)``.

    Row i's positive is column i. ``cols (B + S,)``: the item of each column (``cols[:B]`` the
    targets); with it, accidental hits are masked exactly as
    ``rayrec.models.losses.negative_mask(cols[:B], cols, mask_sample_hits)``; without it only
    the diagonal is excluded (the ``valid=None`` behaviour of ``rayrec.models.losses``).
    ``bpreg``: BPR-max score regularisation; ``log_q (B + S,)`` and ``logq``: the logQ
    correction of the cross-entropy. Equals the matching ``rayrec.models.losses`` function.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if scores.dim() != 2 or scores.shape[1] < scores.shape[0]:
        raise ValueError(
            f"scores must be (B, B + S) with the targets in the first B columns, got "
            f"{tuple(scores.shape)}"
        )
    b, c = scores.shape
    if cols is not None:
        cols = torch.as_tensor(cols, device=scores.device).long().contiguous()
        if tuple(cols.shape) != (c,):
            raise ValueError(f"cols must be (C,)=({c},), got {tuple(cols.shape)}")
    if bpreg < 0:
        raise ValueError(f"bpreg must be >= 0, got {bpreg}")
    adj = None
    if loss == "cross-entropy" and log_q is not None and logq > 0.0:
        if tuple(log_q.shape) != (c,):
            raise ValueError(f"log_q must be (C,)=({c},), got {tuple(log_q.shape)}")
        adj = (float(logq) * log_q.detach().float()).contiguous()
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    which = resolve_backend("sampled_ranking_loss", scores.device, backend)
    if which == "triton":
        from rayrec.ops_kernels.ranking_losses.triton_impl import ranking_loss_triton

        per_row = ranking_loss_triton(scores, loss, cols, mask_sample_hits, bpreg, adj)
    else:
        per_row = ranking_loss_reference(scores, loss, cols, mask_sample_hits, bpreg, adj)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.mean() if per_row.numel() else per_row.sum() * 0.0

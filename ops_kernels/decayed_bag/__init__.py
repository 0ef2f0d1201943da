"""Fused decayed embedding-bag (the daily model's input layer with eq. 5's Td inside).

Public entry point: :func:`decayed_embedding_bag`.
"""

from __future__ import annotations

import math

import torch

from rayrec.ops_kernels._dispatch import resolve_backend
from rayrec.ops_kernels.decayed_bag.reference import decayed_bag_reference

__all__ = ["decayed_embedding_bag"]


def decayed_embedding_bag(
    weight: torch.Tensor,
    item_idx: torch.Tensor,
    offsets: torch.Tensor,
    days_ago: torch.Tensor,
    decay: float,
    backend: str | None = None,
) -> torch.Tensor:
    """``sum_n Td(days_ago_n, decay) weight[item_idx_n]`` per CSR row -> (B, H).

    weight (P, H); item_idx (nnz,) long; offsets (B + 1,) long with offsets[0] == 0 and
    offsets[-1] == nnz; days_ago (nnz,) float, age in days relative to the window end;
    decay > 0 days (seed 000 eq. 5). Differentiable in ``weight``.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be (P, H), got shape {tuple(weight.shape)}")
    if not (isinstance(decay, (int, float)) and math.isfinite(decay) and decay > 0):
        raise ValueError(f"decay must be a finite number of days > 0, got {decay!r}")
    dev = weight.device
    item_idx = torch.as_tensor(item_idx, device=dev).long().contiguous()
    offsets = torch.as_tensor(offsets, device=dev).long().contiguous()
    days_ago = torch.as_tensor(days_ago, device=dev).contiguous()
    if item_idx.dim() != 1 or days_ago.shape != item_idx.shape:
        raise ValueError(
            f"item_idx and days_ago must both be (nnz,), got {tuple(item_idx.shape)} and "
            f"{tuple(days_ago.shape)}"
        )
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"offsets must be (B + 1,), got {tuple(offsets.shape)}")
    if int(offsets[0]) != 0 or int(offsets[-1]) != item_idx.numel():
        raise ValueError("offsets must start at 0 and end at nnz")
    if offsets.numel() > 1 and bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError("offsets must be non-decreasing")
    if item_idx.numel() and (int(item_idx.min()) < 0 or int(item_idx.max()) >= weight.shape[0]):
        raise ValueError(f"item_idx out of range [0, {weight.shape[0]})")
    if not days_ago.is_floating_point():
        days_ago = days_ago.float()
    which = resolve_backend("decayed_embedding_bag", dev, backend)
    if which == "triton":
        from rayrec.ops_kernels.decayed_bag.triton_impl import decayed_bag_triton

        return decayed_bag_triton(weight, item_idx, offsets, days_ago, float(decay))
    return decayed_bag_reference(weight, item_idx, offsets, days_ago, float(decay))

"""Decayed embedding-bag: the daily model's input layer (seed 000, eqs. 5-6).

``out_b = sum_{n in row b} Td(days_ago_n, decay) * W[item_n]`` with eq. 5's
``Td(a, decay) = 1 / (1 + a / decay)`` for ``a >= 0`` and 0 for a purchase after the reference
date (``a < 0``), exactly ``rayrec.models.daily_nn.time_decay``. The reference computes the
``(nnz,)`` weights and calls ``embedding_bag`` (sum mode, CSR offsets): memory is
``O(nnz + B H)``, never a dense ``(B, P)`` input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["decay_weights", "decayed_bag_reference"]


def decay_weights(days_ago: torch.Tensor, decay: float, dtype: torch.dtype) -> torch.Tensor:
    """Eq. 5's Td per non-zero, (nnz,); computed in fp32, or fp64 when the ages or the
    weights are fp64 (then exactly ``rayrec.models.daily_nn.time_decay`` in that precision)."""
    a = days_ago.to(torch.promote_types(torch.promote_types(days_ago.dtype, dtype), torch.float32))
    td = torch.where(a >= 0, 1.0 / (1.0 + a.clamp(min=0) / decay), torch.zeros_like(a))
    return td.to(dtype)


def decayed_bag_reference(
    weight: torch.Tensor,
    item_idx: torch.Tensor,
    offsets: torch.Tensor,
    days_ago: torch.Tensor,
    decay: float,
) -> torch.Tensor:
    """(B, H); differentiable in ``weight``."""
    td = decay_weights(days_ago, decay, weight.dtype)
    return F.embedding_bag(
        item_idx, weight, offsets, mode="sum", per_sample_weights=td, include_last_offset=True
    )

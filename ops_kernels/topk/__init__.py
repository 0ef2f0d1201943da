"""Fused scoring + top-K over the catalog with an exclusion list (serving, evaluation).

Public entry points: :func:`topk_scores` and :func:`pad_exclusions`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rayrec.ops_kernels._dispatch import KernelUnavailableError, requested_backend, resolve_backend
from rayrec.ops_kernels.topk.reference import finalize, topk_reference

__all__ = ["pad_exclusions", "topk_scores"]

MAX_TRITON_KP = 256  # kept in step with triton_impl.MAX_KP (not imported: triton is optional)


def pad_exclusions(
    rows: Sequence[Sequence[int]], device: torch.device | str | None = None
) -> torch.Tensor:
    """Per-row item lists -> a ``(B, E)`` long tensor padded with -1 (E = longest list)."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out if device is None else out.to(device)


def topk_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    exclude: torch.Tensor | Sequence[Sequence[int]] | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    item_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best items of ``hidden @ weight.T + bias`` per row, never building ``(B, N)``.

    hidden (B, D); weight (N, D); bias (N,) or None; exclude: ``(B, E)`` long padded with
    negatives, or per-row lists (items that must not be returned, e.g. already consumed).
    item_mask: ``(N,)`` bool or None, False = the item is never returned for any row (a
    catalog-wide filter such as categories); it is folded into the bias as ``-inf``.
    Returns ``(values (B, k) float32, indices (B, k) long)``, best first; slots beyond a row's
    eligible items hold ``-inf`` / ``-1``. Not differentiable (serving / evaluation).
    """
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be (B, D), got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must be (N, D) with D={hidden.shape[1]}, got shape {tuple(weight.shape)}"
        )
    n = weight.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, N={n}], got {k!r}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must be (N,)=({n},), got {tuple(bias.shape)}")
    if exclude is not None:
        if not isinstance(exclude, torch.Tensor):
            exclude = pad_exclusions(exclude)
        exclude = exclude.to(hidden.device).long()
        if exclude.dim() != 2 or exclude.shape[0] != hidden.shape[0]:
            raise ValueError(
                f"exclude must be (B, E)=({hidden.shape[0]}, E), got {tuple(exclude.shape)}"
            )
        if exclude.numel() and int(exclude.max()) >= n:
            raise ValueError(f"exclude holds an item >= N={n}")
        exclude = exclude.contiguous()
        if exclude.shape[1] == 0:
            exclude = None
    if item_mask is not None:
        item_mask = torch.as_tensor(item_mask, device=hidden.device)
        if item_mask.dtype != torch.bool or tuple(item_mask.shape) != (n,):
            raise ValueError(
                f"item_mask must be a (N,)=({n},) bool tensor, got {item_mask.dtype} "
                f"{tuple(item_mask.shape)}"
            )
        off = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        off = off.masked_fill(~item_mask, float("-inf"))  # (N,) 0 = allowed, -inf = never
        bias = off if bias is None else bias.float() + off
    e = 0 if exclude is None else exclude.shape[1]
    which = resolve_backend("topk_scores", hidden.device, backend)
    if which == "triton" and k + e > MAX_TRITON_KP:
        if requested_backend(backend) == "triton":
            raise KernelUnavailableError(
                f"topk_scores: triton was forced but k + exclusion width = {k + e} exceeds "
                f"{MAX_TRITON_KP}"
            )
        which = "reference"
    if which == "triton":
        from rayrec.ops_kernels.topk.triton_impl import topk_triton

        vals, idx = topk_triton(hidden, weight, k, bias, exclude)
        # masked items score -inf: never returned (the reference's finalize does the same)
        return finalize(vals, idx) if item_mask is not None else (vals, idx)
    return topk_reference(hidden, weight, k, bias, exclude, chunk_size)

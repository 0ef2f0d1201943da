"""Fused GRU step with the session-reset mask (training and one-event-at-a-time serving).

Public entry point: :func:`gru_step`.
"""

from __future__ import annotations

import torch

from rayrec.ops_kernels._dispatch import resolve_backend
from rayrec.ops_kernels.gru_step.reference import gru_step_reference

__all__ = ["gru_step"]


def gru_step(
    gx: torch.Tensor,
    h_prev: torch.Tensor,
    w_rz: torch.Tensor,
    w_h: torch.Tensor,
    reset: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """One GRU step (see ``reference.py``): gx (B, 3H), h_prev (B, H), w_rz (H, 2H),
    w_h (H, H), reset (B,) bool (True = the row starts a new session) -> h_new (B, H)."""
    if h_prev.dim() != 2:
        raise ValueError(f"h_prev must be (B, H), got shape {tuple(h_prev.shape)}")
    b, hsz = h_prev.shape
    if tuple(gx.shape) != (b, 3 * hsz):
        raise ValueError(f"gx must be (B, 3H)=({b}, {3 * hsz}), got {tuple(gx.shape)}")
    if tuple(w_rz.shape) != (hsz, 2 * hsz):
        raise ValueError(f"w_rz must be (H, 2H)=({hsz}, {2 * hsz}), got {tuple(w_rz.shape)}")
    if tuple(w_h.shape) != (hsz, hsz):
        raise ValueError(f"w_h must be (H, H)=({hsz}, {hsz}), got {tuple(w_h.shape)}")
    if reset is not None:
        reset = torch.as_tensor(reset, device=h_prev.device).bool()
        if tuple(reset.shape) != (b,):
            raise ValueError(f"reset must be (B,)=({b},), got {tuple(reset.shape)}")
    which = resolve_backend("gru_step", h_prev.device, backend)
    if which == "triton":
        from rayrec.ops_kernels.gru_step.triton_impl import gru_step_triton

        return gru_step_triton(gx, h_prev, w_rz, w_h, reset)
    return gru_step_reference(gx, h_prev, w_rz, w_h, reset)

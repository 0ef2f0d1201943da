"""One GRU step with the session-reset mask: the CPU path and the oracle.

The GRU of seed 003 section 2.2 (Cho et al. 2014), as in ``rayrec.models.gru4rec``: the reset
gate multiplies ``h_{t-1}`` *before* the recurrent matmul::

    h = h_prev * (1 - reset)                       (session-parallel reset, seed 003 3.1.1)
    r, z = sigmoid(gx[:, :2H] + h @ Wrz)           (gates)
    c = tanh(gx[:, 2H:] + (r * h) @ Wh)            (candidate)
    h_new = (1 - z) h + z c

``gx (B, 3H)`` is the input projection ``x @ Wx + b`` (gate blocks [r | z | h]); it is an
input so the same op serves the one-hot (row lookup) and the embedded first layer.
"""

from __future__ import annotations

import torch

__all__ = ["gru_step_reference"]


def gru_step_reference(
    gx: torch.Tensor,
    h_prev: torch.Tensor,
    w_rz: torch.Tensor,
    w_h: torch.Tensor,
    reset: torch.Tensor | None = None,
) -> torch.Tensor:
    """h_new (B, H); differentiable in every tensor argument (plain torch autograd)."""
    hsz = h_prev.shape[1]
    h = h_prev if reset is None else h_prev * (~reset).to(h_prev.dtype).unsqueeze(1)  # (B, H)
    rz = torch.sigmoid(gx[:, : 2 * hsz] + h @ w_rz)  # (B, 2H)
    r, z = rz[:, :hsz], rz[:, hsz:]
    cand = torch.tanh(gx[:, 2 * hsz :] + (r * h) @ w_h)  # (B, H)
    return torch.lerp(h, cand, z)

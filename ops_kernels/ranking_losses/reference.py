"""Sampled ranking losses of GRU4Rec with closed-form gradients: CPU path and oracle.

The losses and the score block follow ``rayrec.models.losses`` (seed 003 section 3.1.3; the
Top-k gains paper, Hidasi & Karatzoglou 2018, section 3 for BPR-max / TOP1-max; the authors'
official code for the cross-entropy with logQ). Row ``i`` of ``scores (B, C)`` has its positive
at column ``i``; ``valid_ij`` marks its negatives (``cols[j] != cols[i]``, extra samples
``j >= B`` only when ``mask_sample_hits``; without ``cols`` only the diagonal is excluded).
With ``w = softmax`` of the valid scores of the row, ``sigma_j = sigmoid(s_i - s_j)``:

* BPR-max: ``L = -log(I + 1e-24) + bpreg R``, ``I = sum_j w_j sigma_j``,
  ``R = sum_j w_j s_j^2``;
  ``dL/ds_k = -(w_k (sigma_k - I) - w_k sigma_k (1 - sigma_k)) / (I + 1e-24)
  + bpreg w_k (s_k^2 - R + 2 s_k)`` for a negative k and
  ``dL/ds_i = -sum_j w_j sigma_j (1 - sigma_j) / (I + 1e-24)``.
* TOP1-max: ``L = sum_j w_j a_j``, ``a_j = tau_j + q_j``, ``tau_j = sigmoid(s_j - s_i)``,
  ``q_j = sigmoid(s_j^2)``; ``dL/ds_k = w_k (a_k - L + tau_k (1 - tau_k) + 2 s_k q_k (1 - q_k))``,
  ``dL/ds_i = -sum_j w_j tau_j (1 - tau_j)``.
* cross-entropy: ``z = s - logq * log_q``, kept columns = negatives + the positive,
  ``L = logsumexp_kept(z) - z_i``, ``dL/ds_k = softmax_kept(z)_k - [k == i]``.

(Using ``d w_j / d s_k = w_j ([j == k] - w_k)`` for the softmax over negatives.) Rows without
any negative get ``w = 0``. The forward and backward here are plain torch on the ``(B, C)``
block, in fp32; the Triton version computes the same per row without the intermediate
``(B, C)`` tensors.
"""

from __future__ import annotations

import torch

__all__ = ["LOSSES", "build_valid", "ranking_loss_reference"]

LOSSES = ("bpr-max", "top1-max", "cross-entropy")
EPS = 1e-24


def build_valid(
    b: int, c: int, cols: torch.Tensor | None, mask_sample_hits: bool, device: torch.device
) -> torch.Tensor:
    """(B, C) bool: the negatives of each row (never its own column)."""
    if cols is None:
        valid = torch.ones(b, c, dtype=torch.bool, device=device)
        valid[:, :b].fill_diagonal_(False)
        return valid
    valid = cols.unsqueeze(0) != cols[:b].unsqueeze(1)  # (B, C)
    if not mask_sample_hits and c > b:
        valid[:, b:] = True
    valid[:, :b].fill_diagonal_(False)
    return valid


def _softmax_valid(s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    m = s.masked_fill(~valid, float("-inf")).amax(1, keepdim=True)  # (B, 1)
    m = m.masked_fill(m == float("-inf"), 0.0)
    e = torch.exp(s - m) * valid  # (B, C)
    tot = e.sum(1, keepdim=True)
    return e / tot.masked_fill(tot == 0, 1.0)


def _forward_backward(s, valid, name, bpreg, adj):
    """Per-row losses (B,) and d(loss_i)/d s_i. (B, C), all fp32."""
    b = s.shape[0]
    if name == "cross-entropy":  # one pass: max, exp, sum give both the loss and the softmax
        z = s if adj is None else s - adj.unsqueeze(0)
        keep = valid.clone()
        keep[:, :b].fill_diagonal_(True)
        zm = z.masked_fill(~keep, float("-inf"))  # (B, C); the positive is always kept
        m = zm.amax(1, keepdim=True)  # (B, 1), finite
        e = torch.exp(zm - m)  # (B, C), 0 where masked
        tot = e.sum(1, keepdim=True)  # (B, 1) >= 1
        loss = torch.log(tot.squeeze(1)) + m.squeeze(1) - z.diagonal()
        grad = e.div_(tot)
        grad[:, :b].diagonal().sub_(1.0)
        return loss, grad
    eye = torch.zeros_like(valid)
    eye[:, :b].fill_diagonal_(True)
    pos = s.diagonal()[:, None]  # (B, 1)
    w = _softmax_valid(s, valid)  # (B, C)
    if name == "bpr-max":
        sig = torch.sigmoid(pos - s)  # (B, C)
        inner = (w * sig).sum(1, keepdim=True)  # (B, 1)
        reg = (w * s * s).sum(1, keepdim=True)
        coef = 1.0 / (inner + EPS)
        d_sig = sig * (1.0 - sig)
        grad = -coef * (w * (sig - inner) - w * d_sig) + bpreg * w * (s * s - reg + 2.0 * s)
        grad = grad * valid
        dpos = -coef.squeeze(1) * (w * d_sig).sum(1)
        loss = -torch.log(inner.squeeze(1) + EPS) + bpreg * reg.squeeze(1)
    else:  # top1-max
        tau = torch.sigmoid(s - pos)
        q = torch.sigmoid(s * s)
        a = tau + q
        loss1 = (w * a).sum(1, keepdim=True)
        d_tau = tau * (1.0 - tau)
        grad = w * (a - loss1 + d_tau + 2.0 * s * q * (1.0 - q))
        grad = grad * valid
        dpos = -(w * d_tau).sum(1)
        loss = loss1.squeeze(1)
    grad = grad + eye.to(s.dtype) * dpos.unsqueeze(1)
    return loss, grad


class RankingLossReference(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, valid, name, bpreg, adj):
        loss, grad = _forward_backward(scores.float(), valid, name, bpreg, adj)
        ctx.save_for_backward(grad)
        ctx.in_dtype = scores.dtype
        return loss

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return (grad * g.float().unsqueeze(1)).to(ctx.in_dtype), None, None, None, None


def ranking_loss_reference(
    scores: torch.Tensor,
    name: str,
    cols: torch.Tensor | None = None,
    mask_sample_hits: bool = True,
    bpreg: float = 1.0,
    adj: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row losses (B,); ``adj = logq * log_q`` (C,) for the cross-entropy or None."""
    b, c = scores.shape
    valid = build_valid(b, c, cols, mask_sample_hits, scores.device)
    return RankingLossReference.apply(scores, valid, name, float(bpreg), adj)

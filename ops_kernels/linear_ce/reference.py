"""Chunked fused linear cross-entropy over the catalog: the CPU path and the test oracle.

The loss of row ``i`` is ``-log softmax(z_i)[t_i]`` with ``z_ij = h_i . w_j + b_j - logq *
log_q_j`` over the columns ``j`` of ``weight`` (every catalog item for the full softmax, the
``B + S`` sampled columns for the sampled variant; seed 003 section 3.1.2 and the logQ
correction of the authors' official GRU4Rec code / ``rayrec.models.losses.cross_entropy``).
The anchor is Liger-Kernel's fused linear cross-entropy: the ``(B, N)`` logits are never held
whole. The forward runs an *online* logsumexp over chunks of ``chunk`` columns
(running max ``m`` and rescaled sum ``s``: ``s <- s * exp(m - m') + sum_j exp(z_j - m')``) and
keeps only ``lse (B,)``; the backward recomputes each chunk's logits, turns them into
``p = exp(z - lse)`` and accumulates ``dh += p W_c``, ``dW_c = p^T h``, ``db_c = sum_i p``; the
positive's ``-1`` is applied once through the target rows. Peak extra memory is one
``(B, chunk)`` block plus the gradients themselves.

Masked columns (accidental hits of the sampled variant) are described without a ``(B, C)``
mask: column ``j`` is left out of row ``i``'s partition when ``col_items[j] == col_items[pos_i]``
and ``j != pos_i`` (and, when ``mask_from < C``, only for ``j < mask_from`` plus, if
``mask_samples``, the rest too). Computation is in fp32 whatever the input dtype; gradients
are returned in the input dtypes.
"""

from __future__ import annotations

import torch

__all__ = ["default_chunk", "linear_ce_reference", "LinearCEReference"]


def default_chunk(batch: int, n_cols: int) -> int:
    """Columns per chunk: ~4M logits (16 MB fp32) per block, at least 1024."""
    return max(1024, min(max(n_cols, 1), (1 << 22) // max(batch, 1)))


def _chunk_logits(h, w, b, adj, c0, c1):  # noqa: ANN001, ANN202
    """fp32 logits of columns [c0, c1): (B, c)."""
    wc = w[c0:c1].float()  # (c, D)
    if b is not None:
        z = torch.addmm(b[c0:c1].float(), h, wc.t())  # (B, c)
    else:
        z = h @ wc.t()  # (B, c)
    if adj is not None:
        z.sub_(adj[c0:c1])
    return z


def _mask_chunk(z, col_items, pos, pos_items, c0, c1, n_batch_cols, mask_samples):  # noqa: ANN001, ANN202
    """-inf at accidental hits inside the chunk (in place)."""
    if col_items is None:
        return z
    hit = col_items[c0:c1].unsqueeze(0) == pos_items.unsqueeze(1)  # (B, c)
    cols = torch.arange(c0, c1, device=z.device)
    hit &= cols.unsqueeze(0) != pos.unsqueeze(1)  # the positive itself stays
    if not mask_samples:
        hit &= (cols < n_batch_cols).unsqueeze(0)
    return z.masked_fill_(hit, float("-inf"))


class LinearCEReference(torch.autograd.Function):
    """Per-row losses ``(B,)``; gradients for hidden, weight and bias."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, pos, adj, col_items, n_batch_cols, mask_samples, chunk):  # noqa: ANN001, ANN205
        h = hidden.float()  # (B, D)
        bsz, n = h.shape[0], weight.shape[0]
        m = torch.full((bsz,), float("-inf"), device=h.device)  # running max
        s = torch.zeros(bsz, device=h.device)  # running sum of exp(z - m)
        pos_items = None if col_items is None else col_items[pos]
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            z = _chunk_logits(h, weight, bias, adj, c0, c1)  # (B, c)
            _mask_chunk(z, col_items, pos, pos_items, c0, c1, n_batch_cols, mask_samples)
            m_new = torch.maximum(m, z.amax(dim=1))  # (B,)
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # a fully masked chunk
            s = s * torch.exp(m - m_safe) + torch.exp(z - m_safe.unsqueeze(1)).sum(1)
            m = m_new
        lse = m + torch.log(s)  # (B,)
        wt = weight[pos].float()  # (B, D): the positive columns
        zpos = (h * wt).sum(1)
        if bias is not None:
            zpos = zpos + bias[pos].float()
        if adj is not None:
            zpos = zpos - adj[pos]
        ctx.save_for_backward(hidden, weight, bias, pos, adj, col_items, lse)
        ctx.meta = (n_batch_cols, mask_samples, chunk)
        return lse - zpos

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        hidden, weight, bias, pos, adj, col_items, lse = ctx.saved_tensors
        n_batch_cols, mask_samples, chunk = ctx.meta
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        h = hidden.float()
        g = g.float()  # (B,)
        n = weight.shape[0]
        pos_items = None if col_items is None else col_items[pos]
        dh = torch.zeros_like(h) if need_h else None
        dw = torch.zeros(weight.shape, device=h.device) if need_w else None
        db = torch.zeros(n, device=h.device) if (need_b and bias is not None) else None
        gl = lse.unsqueeze(1)
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            z = _chunk_logits(h, weight, bias, adj, c0, c1)
            _mask_chunk(z, col_items, pos, pos_items, c0, c1, n_batch_cols, mask_samples)
            p = z.sub_(gl).exp_().mul_(g.unsqueeze(1))  # (B, c): g_i * softmax_ij
            if dh is not None:
                dh.addmm_(p, weight[c0:c1].float())
            if dw is not None:
                torch.mm(p.t(), h, out=dw[c0:c1])
            if db is not None:
                db[c0:c1] = p.sum(0)
        # the positive's -1
        if dh is not None:
            dh.sub_(weight[pos].float() * g.unsqueeze(1))
        if dw is not None:
            dw.index_add_(0, pos, h * (-g).unsqueeze(1))
        if db is not None:
            db.index_add_(0, pos, -g)
        out_h = None if dh is None else dh.to(hidden.dtype)
        out_w = None if dw is None else dw.to(weight.dtype)
        out_b = None if db is None else db.to(bias.dtype)
        return out_h, out_w, out_b, None, None, None, None, None, None


def linear_ce_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos: torch.Tensor,
    adj: torch.Tensor | None = None,
    col_items: torch.Tensor | None = None,
    n_batch_cols: int = 0,
    mask_samples: bool = True,
    chunk: int | None = None,
) -> torch.Tensor:
    """Per-row losses ``(B,)`` (see the module docstring for the arguments)."""
    if chunk is None:
        chunk = default_chunk(hidden.shape[0], weight.shape[0])
    return LinearCEReference.apply(
        hidden, weight, bias, pos, adj, col_items, n_batch_cols, mask_samples, int(chunk)
    )

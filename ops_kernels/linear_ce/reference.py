"""Chunked fused linear cross-entropy over the catalog: the CPU path and the test oracle.

The loss of row ``i`` is ``-log softmax(z_i)[t_i]`` with ``z_ij = h_i . w_j + b_j - logq *
log_q_j`` over the columns ``j`` of ``weight`` (every catalog item for the full softmax, the
``B + S`` sampled columns for the sampled variant; seed 003 section 3.1.2 and the logQ
correction of the authors' official GRU4Rec code / ``rayrec.models.losses.cross_entropy``).
The anchor is Liger-Kernel's fused linear cross-entropy: the ``(B, N)`` logits are never held
whole. The forward runs an *online* logsumexp over chunks of ``chunk`` columns
(``lse <- lse + log1p(sum_j exp(z_j - lse))``, with a max-shifted fallback for the first chunk
and on overflow) and keeps only ``lse (B,)``; the backward recomputes each chunk's logits,
turns them into ``p = exp(z - lse)`` and accumulates ``dh += p W_c``, ``dW_c = p^T (g h)``,
``db_c = p^T g``; the positive's ``-1`` is applied once through the target rows. Bias, logQ
correction and the shift are folded into the chunk matmul (``[h | 1 | -shift] @
[W_c | b_c - adj_c | 1]^T``), so each chunk costs one matmul plus one ``exp`` pass in the
forward and three matmuls plus one ``exp`` pass in the backward. Peak extra memory is one
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


class _Chunker:
    """Builds ``[W_c | b_c - adj_c | 1]`` (c, D + 2) per chunk in one reused fp32 buffer.

    With ``hx = [h | 1 | -shift]`` (B, D + 2), one matmul ``hx @ W'^T`` gives the shifted
    logits ``z - shift`` including the bias and the logQ correction: no separate pass over the
    ``(B, c)`` block for the bias or the shift.
    """

    def __init__(self, weight, bias, adj, chunk):
        d = weight.shape[1]
        self.weight, self.bias, self.adj, self.d = weight, bias, adj, d
        self.buf = torch.empty(min(chunk, weight.shape[0]), d + 2, device=weight.device)
        self.buf[:, d + 1] = 1.0

    def __call__(self, c0: int, c1: int) -> torch.Tensor:
        c, d = c1 - c0, self.d
        wb = self.buf[:c]
        wb[:, :d].copy_(self.weight[c0:c1])
        if self.bias is not None:
            wb[:, d].copy_(self.bias[c0:c1])
        else:
            wb[:, d].zero_()
        if self.adj is not None:
            wb[:, d].sub_(self.adj[c0:c1])
        return wb


def _hx(h: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """[h | 1 | -shift] (B, D + 2)."""
    return torch.cat([h, torch.ones_like(shift)[:, None], -shift[:, None]], dim=1)


def _mask_chunk(z, col_items, pos, pos_items, c0, c1, n_batch_cols, mask_samples):
    """-inf at accidental hits inside the chunk (in place)."""
    if col_items is None:
        return z
    hit = col_items[c0:c1].unsqueeze(0) == pos_items.unsqueeze(1)  # (B, c)
    cols = torch.arange(c0, c1, device=z.device)
    hit &= cols.unsqueeze(0) != pos.unsqueeze(1)  # the positive itself stays
    if not mask_samples:
        hit &= (cols < n_batch_cols).unsqueeze(0)
    return z.masked_fill_(hit, float("-inf"))


def _lse(h, weight, bias, adj, col_items, pos, n_batch_cols, mask_samples, chunk):
    """Row-wise logsumexp over all columns, chunk by chunk: (B,).

    The running value ``lse`` is the shift of the next chunk (folded into the matmul), so
    ``exp(z - lse)`` cannot overflow unless a chunk holds a logit ~88 above everything seen so
    far; that (and the first chunk) takes the careful max-shifted path.
    """
    bsz, n = h.shape[0], weight.shape[0]
    pos_items = None if col_items is None else col_items[pos]
    build = _Chunker(weight, bias, adj, chunk)
    lse = torch.full((bsz,), float("-inf"), device=h.device)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        wb = build(c0, c1)
        fast = bool(torch.isfinite(lse).all())
        if fast:
            z = _hx(h, lse) @ wb.t()  # (B, c): z - lse
            _mask_chunk(z, col_items, pos, pos_items, c0, c1, n_batch_cols, mask_samples)
            cs = z.exp_().sum(1)
            if bool(torch.isfinite(cs).all()):
                lse = lse + torch.log1p(cs)
                continue
        z = _hx(h, torch.zeros_like(lse)) @ wb.t()  # (B, c): z
        _mask_chunk(z, col_items, pos, pos_items, c0, c1, n_batch_cols, mask_samples)
        m = torch.maximum(lse, z.amax(dim=1))
        m = m.masked_fill(m == float("-inf"), 0.0)  # rows fully masked so far
        cs = z.sub_(m[:, None]).exp_().sum(1)
        lse = m + torch.log(torch.exp(lse - m) + cs)
    return lse


class LinearCEReference(torch.autograd.Function):
    """Per-row losses ``(B,)``; gradients for hidden, weight and bias."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, pos, adj, col_items, n_batch_cols, mask_samples, chunk):
        h = hidden.float()  # (B, D)
        lse = _lse(h, weight, bias, adj, col_items, pos, n_batch_cols, mask_samples, chunk)
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
    def backward(ctx, g):
        hidden, weight, bias, pos, adj, col_items, lse = ctx.saved_tensors
        n_batch_cols, mask_samples, chunk = ctx.meta
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias is not None
        h = hidden.float()
        g = g.float()  # (B,)
        n = weight.shape[0]
        pos_items = None if col_items is None else col_items[pos]
        # p = softmax rows; dh = g * (p W), dW = p^T (g h), db = p^T g: g is applied to the
        # small (B, D) operands instead of the (B, c) block.
        dh = torch.zeros_like(h) if need_h else None
        dw = torch.empty(weight.shape, device=h.device) if need_w else None
        db = torch.empty(n, device=h.device) if need_b else None
        hg = h * g[:, None]
        hx = _hx(h, lse)
        build = _Chunker(weight, bias, adj, chunk)
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            wb = build(c0, c1)
            p = hx @ wb.t()  # (B, c): z - lse
            _mask_chunk(p, col_items, pos, pos_items, c0, c1, n_batch_cols, mask_samples)
            p.exp_()
            if dh is not None:
                dh.addmm_(p, wb[:, : h.shape[1]])
            if dw is not None:
                torch.mm(p.t(), hg, out=dw[c0:c1])
            if db is not None:
                torch.mv(p.t(), g, out=db[c0:c1])
        # the positive's -1
        if dh is not None:
            dh.mul_(g[:, None]).sub_(weight[pos].float() * g[:, None])
        if dw is not None:
            dw.index_add_(0, pos, -hg)
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

"""Triton kernels of the sampled ranking losses (see ``reference.py`` for the formulas).

One program per row of the ``(B, C)`` score block, looping over column tiles. The forward
kernel makes two passes (the masked max, then the sums ``sum e``, ``sum e sigma``,
``sum e s^2`` / ``sum e a`` with ``e = exp(s - max)``) and writes the per-row loss and those
statistics; the backward kernel makes one pass that recomputes ``w = e / sum e`` and writes the
gradient of every column (the positive's column is written once at the end from its own
reduction). The validity of a column (``cols[j] != cols[i]``, the diagonal, sample hits) is
computed in registers from ``cols``; no ``(B, C)`` mask or intermediate is stored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rayrec.ops_kernels._dispatch import triton_interpret

__all__ = ["ranking_loss_triton"]

_CODES = {"bpr-max": 0, "top1-max": 1, "cross-entropy": 2}


@triton.jit
def _valid(cols_ptr, rn, row, B, cmask, HAS_COLS: tl.constexpr, MASK_SAMPLES: tl.constexpr):
    v = cmask & (rn != row)
    if HAS_COLS:
        ci = tl.load(cols_ptr + rn, mask=cmask, other=-1)
        trow = tl.load(cols_ptr + row)
        hit = ci == trow
        if not MASK_SAMPLES:
            hit = hit & (rn < B)
        v = v & (hit == 0)
    return v


@triton.jit
def _fwd_kernel(s_ptr, cols_ptr, adj_ptr, loss_ptr, stat_ptr, B, C, stride_s, bpreg,
                LOSS: tl.constexpr, HAS_COLS: tl.constexpr, MASK_SAMPLES: tl.constexpr,
                HAS_ADJ: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)
    base = s_ptr + row * stride_s
    sp = tl.load(base + row).to(tl.float32)
    if LOSS == 2:
        if HAS_ADJ:
            sp -= tl.load(adj_ptr + row)
    m = tl.full([BLOCK_C], float("-inf"), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        rn = c0 + tl.arange(0, BLOCK_C)
        cmask = rn < C
        v = _valid(cols_ptr, rn, row, B, cmask, HAS_COLS, MASK_SAMPLES)
        x = tl.load(base + rn, mask=cmask, other=0.0).to(tl.float32)
        if LOSS == 2:
            if HAS_ADJ:
                x -= tl.load(adj_ptr + rn, mask=cmask, other=0.0)
            v = v | (rn == row)
        m = tl.maximum(m, tl.where(v, x, float("-inf")))
    mx = tl.max(m, 0)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    se = tl.zeros([BLOCK_C], tl.float32)
    s1 = tl.zeros([BLOCK_C], tl.float32)
    s2 = tl.zeros([BLOCK_C], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        rn = c0 + tl.arange(0, BLOCK_C)
        cmask = rn < C
        v = _valid(cols_ptr, rn, row, B, cmask, HAS_COLS, MASK_SAMPLES)
        x = tl.load(base + rn, mask=cmask, other=0.0).to(tl.float32)
        if LOSS == 2:
            if HAS_ADJ:
                x -= tl.load(adj_ptr + rn, mask=cmask, other=0.0)
            v = v | (rn == row)
        e = tl.where(v, tl.exp(x - mx), 0.0)
        se += e
        if LOSS == 0:
            s1 += e * tl.sigmoid(sp - x)
            s2 += e * x * x
        if LOSS == 1:
            s1 += e * (tl.sigmoid(x - sp) + tl.sigmoid(x * x))
    tot = tl.sum(se, 0)
    inv = tl.where(tot > 0, 1.0 / tl.where(tot > 0, tot, 1.0), 0.0)
    a1 = tl.sum(s1, 0) * inv
    a2 = tl.sum(s2, 0) * inv
    if LOSS == 0:
        loss = -tl.log(a1 + 1e-24) + bpreg * a2
    elif LOSS == 1:
        loss = a1
    else:
        loss = mx + tl.log(tot) - sp
    tl.store(loss_ptr + row, loss)
    tl.store(stat_ptr + row * 4 + 0, mx)
    tl.store(stat_ptr + row * 4 + 1, inv)
    tl.store(stat_ptr + row * 4 + 2, a1)
    tl.store(stat_ptr + row * 4 + 3, a2)


@triton.jit
def _bwd_kernel(s_ptr, cols_ptr, adj_ptr, stat_ptr, g_ptr, ds_ptr, B, C, stride_s, stride_ds,
                bpreg, LOSS: tl.constexpr, HAS_COLS: tl.constexpr, MASK_SAMPLES: tl.constexpr,
                HAS_ADJ: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)
    base = s_ptr + row * stride_s
    out = ds_ptr + row * stride_ds
    g = tl.load(g_ptr + row)
    sp = tl.load(base + row).to(tl.float32)
    mx = tl.load(stat_ptr + row * 4 + 0)
    inv = tl.load(stat_ptr + row * 4 + 1)
    a1 = tl.load(stat_ptr + row * 4 + 2)
    a2 = tl.load(stat_ptr + row * 4 + 3)
    coef = 1.0 / (a1 + 1e-24)
    dpos = tl.zeros([BLOCK_C], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        rn = c0 + tl.arange(0, BLOCK_C)
        cmask = rn < C
        v = _valid(cols_ptr, rn, row, B, cmask, HAS_COLS, MASK_SAMPLES)
        x = tl.load(base + rn, mask=cmask, other=0.0).to(tl.float32)
        if LOSS == 2:
            if HAS_ADJ:
                x -= tl.load(adj_ptr + rn, mask=cmask, other=0.0)
            v = v | (rn == row)
        w = tl.where(v, tl.exp(x - mx) * inv, 0.0)
        if LOSS == 0:
            sig = tl.sigmoid(sp - x)
            dsig = sig * (1.0 - sig)
            grad = -coef * (w * (sig - a1) - w * dsig) + bpreg * w * (x * x - a2 + 2.0 * x)
            dpos += w * dsig
        elif LOSS == 1:
            tau = tl.sigmoid(x - sp)
            q = tl.sigmoid(x * x)
            dtau = tau * (1.0 - tau)
            grad = w * (tau + q - a1 + dtau + 2.0 * x * q * (1.0 - q))
            dpos += w * dtau
        else:
            grad = w - tl.where(rn == row, 1.0, 0.0)
        if LOSS == 2:
            tl.store(out + rn, (grad * g).to(ds_ptr.dtype.element_ty), mask=cmask)
        else:
            tl.store(out + rn, (grad * g).to(ds_ptr.dtype.element_ty), mask=cmask & (rn != row))
    if LOSS == 0:
        tl.store(out + row, (-coef * tl.sum(dpos, 0) * g).to(ds_ptr.dtype.element_ty))
    if LOSS == 1:
        tl.store(out + row, (-tl.sum(dpos, 0) * g).to(ds_ptr.dtype.element_ty))


def _block(c: int) -> int:
    cap = 128 if triton_interpret() else 1024
    return max(16, min(cap, triton.next_power_of_2(max(c, 1))))


class RankingLossTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, cols, mask_sample_hits, name, bpreg, adj):
        scores = scores.contiguous()
        b, c = scores.shape
        loss = torch.empty(b, device=scores.device, dtype=torch.float32)
        stats = torch.empty(b, 4, device=scores.device, dtype=torch.float32)
        flags = dict(LOSS=_CODES[name], HAS_COLS=cols is not None,
                     MASK_SAMPLES=bool(mask_sample_hits), HAS_ADJ=adj is not None,
                     BLOCK_C=_block(c))
        dummy = stats
        if b > 0:
            _fwd_kernel[(b,)](scores, cols if cols is not None else dummy,
                              adj if adj is not None else dummy, loss, stats, b, c,
                              scores.stride(0), float(bpreg), **flags)
        ctx.save_for_backward(scores, cols, adj, stats)
        ctx.flags = flags
        ctx.bpreg = float(bpreg)
        return loss

    @staticmethod
    def backward(ctx, g):
        scores, cols, adj, stats = ctx.saved_tensors
        b, c = scores.shape
        ds = torch.empty_like(scores)
        g = g.float().contiguous()
        dummy = stats
        if b > 0:
            _bwd_kernel[(b,)](scores, cols if cols is not None else dummy,
                              adj if adj is not None else dummy, stats, g, ds, b, c,
                              scores.stride(0), ds.stride(0), ctx.bpreg, **ctx.flags)
        return ds, None, None, None, None, None


def ranking_loss_triton(scores, name, cols=None, mask_sample_hits=True, bpreg=1.0, adj=None):
    """Per-row losses (B,), same contract as ``ranking_loss_reference``."""
    return RankingLossTriton.apply(scores, cols, mask_sample_hits, name, bpreg, adj)

"""Triton kernels of the fused linear cross-entropy (see ``reference.py`` for the maths).

Three kernels, none of which writes a ``(B, N)`` block to memory:

* ``_lse_kernel`` -- grid ``(B tiles, column splits)``: each program runs the online
  logsumexp of ``BLOCK_B`` rows over its share of the columns, tile by tile
  (``z = h W_tile^T + b - adj`` in registers), and writes a partial ``(m, s)``; the partials
  of the splits are merged in torch (``(splits, B)`` floats).
* ``_dh_kernel`` -- same grid: recomputes each logits tile, ``p = g * exp(z - lse)`` and
  accumulates ``p W_tile`` into a per-split ``(B, D)`` partial.
* ``_dw_kernel`` -- grid ``(N tiles,)``: keeps one weight tile, loops over the rows,
  recomputes the logits and accumulates ``dW_tile = p^T h`` and ``db_tile = sum_i p``.

The positive's ``-1`` term and the positive logit are ``(B, D)``-sized gathers done in torch.
fp32 inputs use TF32 tensor cores only when torch allows it
(``torch.backends.cuda.matmul.allow_tf32``), otherwise IEEE fp32; bf16/fp16 inputs feed the
tensor cores in their own dtype with fp32 accumulation. Under ``TRITON_INTERPRET=1`` every
dot runs in fp32 (the interpreter's low-precision dot is not reliable).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rayrec.ops_kernels._dispatch import triton_interpret

__all__ = ["LinearCETriton", "linear_ce_triton"]


@triton.jit
def _logits_tile(h, w_ptr, b_ptr, adj_ptr, colit_ptr, prow, pit, rn, rd, nmask, D, NB,
                 stride_w, HAS_BIAS: tl.constexpr, HAS_ADJ: tl.constexpr,
                 HAS_MASK: tl.constexpr, MASK_SAMPLES: tl.constexpr,
                 DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    w = tl.load(w_ptr + rn[:, None] * stride_w + rd[None, :],
                mask=nmask[:, None] & (rd[None, :] < D), other=0.0)
    if DOT_F32:
        w = w.to(tl.float32)
    z = tl.dot(h, tl.trans(w), input_precision=PRECISION)  # (BB, BN) fp32
    if HAS_BIAS:
        z += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if HAS_ADJ:
        z -= tl.load(adj_ptr + rn, mask=nmask, other=0.0)[None, :]
    valid = nmask[None, :] & (prow[:, None] >= 0)
    if HAS_MASK:
        ci = tl.load(colit_ptr + rn, mask=nmask, other=-2)
        hit = (ci[None, :] == pit[:, None]) & (rn[None, :] != prow[:, None])
        if not MASK_SAMPLES:
            hit = hit & (rn[None, :] < NB)
        valid = valid & (hit == 0)
    z = tl.where(valid, z, float("-inf"))
    return z, w


@triton.jit
def _lse_kernel(h_ptr, w_ptr, b_ptr, adj_ptr, colit_ptr, pos_ptr, posit_ptr, m_out, s_out,
                B, N, D, NB, cols_per_split, stride_h, stride_w,
                HAS_BIAS: tl.constexpr, HAS_ADJ: tl.constexpr, HAS_MASK: tl.constexpr,
                MASK_SAMPLES: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    bmask = rb < B
    h = tl.load(h_ptr + rb[:, None] * stride_h + rd[None, :],
                mask=bmask[:, None] & (rd[None, :] < D), other=0.0)
    if DOT_F32:
        h = h.to(tl.float32)
    prow = tl.load(pos_ptr + rb, mask=bmask, other=-1)
    pit = prow
    if HAS_MASK:
        pit = tl.load(posit_ptr + rb, mask=bmask, other=-1)
    m = tl.full([BLOCK_B], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_B], tl.float32)
    n_start = pid_s * cols_per_split
    n_end = tl.minimum(N, n_start + cols_per_split)
    for n0 in range(n_start, n_end, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        nmask = rn < n_end
        z, _w = _logits_tile(h, w_ptr, b_ptr, adj_ptr, colit_ptr, prow, pit, rn, rd, nmask, D,
                             NB, stride_w, HAS_BIAS, HAS_ADJ, HAS_MASK, MASK_SAMPLES, DOT_F32,
                             PRECISION)
        m_new = tl.maximum(m, tl.max(z, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(z - m_safe[:, None]), 1)
        m = m_new
    tl.store(m_out + pid_s * B + rb, m, mask=bmask)
    tl.store(s_out + pid_s * B + rb, s, mask=bmask)


@triton.jit
def _dh_kernel(h_ptr, w_ptr, b_ptr, adj_ptr, colit_ptr, pos_ptr, posit_ptr, lse_ptr, g_ptr,
               dh_out, B, N, D, NB, cols_per_split, stride_h, stride_w,
               HAS_BIAS: tl.constexpr, HAS_ADJ: tl.constexpr, HAS_MASK: tl.constexpr,
               MASK_SAMPLES: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    bmask = rb < B
    h = tl.load(h_ptr + rb[:, None] * stride_h + rd[None, :],
                mask=bmask[:, None] & (rd[None, :] < D), other=0.0)
    if DOT_F32:
        h = h.to(tl.float32)
    prow = tl.load(pos_ptr + rb, mask=bmask, other=-1)
    pit = prow
    if HAS_MASK:
        pit = tl.load(posit_ptr + rb, mask=bmask, other=-1)
    lse = tl.load(lse_ptr + rb, mask=bmask, other=0.0)
    g = tl.load(g_ptr + rb, mask=bmask, other=0.0)
    acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    n_start = pid_s * cols_per_split
    n_end = tl.minimum(N, n_start + cols_per_split)
    for n0 in range(n_start, n_end, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        nmask = rn < n_end
        z, w = _logits_tile(h, w_ptr, b_ptr, adj_ptr, colit_ptr, prow, pit, rn, rd, nmask, D,
                            NB, stride_w, HAS_BIAS, HAS_ADJ, HAS_MASK, MASK_SAMPLES, DOT_F32,
                            PRECISION)
        p = tl.exp(z - lse[:, None]) * g[:, None]  # masked columns: exp(-inf) = 0
        acc += tl.dot(p.to(w.dtype), w, input_precision=PRECISION)
    tl.store(dh_out + pid_s * B * BLOCK_D + rb[:, None] * BLOCK_D + rd[None, :], acc,
             mask=bmask[:, None])


@triton.jit
def _dw_kernel(h_ptr, w_ptr, b_ptr, adj_ptr, colit_ptr, pos_ptr, posit_ptr, lse_ptr, g_ptr,
               dw_out, db_out, B, N, D, NB, stride_h, stride_w,
               HAS_BIAS: tl.constexpr, HAS_ADJ: tl.constexpr, HAS_MASK: tl.constexpr,
               MASK_SAMPLES: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
               NEED_DB: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    nmask = rn < N
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dbacc = tl.zeros([BLOCK_N], tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        bmask = rb < B
        h = tl.load(h_ptr + rb[:, None] * stride_h + rd[None, :],
                    mask=bmask[:, None] & (rd[None, :] < D), other=0.0)
        if DOT_F32:
            h = h.to(tl.float32)
        prow = tl.load(pos_ptr + rb, mask=bmask, other=-1)
        pit = prow
        if HAS_MASK:
            pit = tl.load(posit_ptr + rb, mask=bmask, other=-1)
        lse = tl.load(lse_ptr + rb, mask=bmask, other=0.0)
        g = tl.load(g_ptr + rb, mask=bmask, other=0.0)
        z, _w = _logits_tile(h, w_ptr, b_ptr, adj_ptr, colit_ptr, prow, pit, rn, rd, nmask, D,
                             NB, stride_w, HAS_BIAS, HAS_ADJ, HAS_MASK, MASK_SAMPLES, DOT_F32,
                             PRECISION)
        p = tl.exp(z - lse[:, None]) * g[:, None]  # (BB, BN)
        acc += tl.dot(tl.trans(p.to(h.dtype)), h, input_precision=PRECISION)
        if NEED_DB:
            dbacc += tl.sum(p, 0)
    tl.store(dw_out + rn[:, None] * D + rd[None, :], acc, mask=nmask[:, None] & (rd[None, :] < D))
    if NEED_DB:
        tl.store(db_out + rn, dbacc, mask=nmask)


def _cfg(hidden: torch.Tensor, n: int) -> dict:
    interp = triton_interpret() or hidden.device.type != "cuda"
    d = hidden.shape[1]
    block_d = max(16, triton.next_power_of_2(d))
    if interp:
        bb, bn = 16, 32
    else:
        bb, bn = (64, 64) if block_d <= 128 else (32, 64)
    dot_f32 = interp or hidden.dtype == torch.float32
    if hidden.dtype == torch.float32 and not interp and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"
    else:
        precision = "ieee"
    return dict(BLOCK_B=bb, BLOCK_N=bn, BLOCK_D=block_d, DOT_F32=dot_f32, PRECISION=precision)


def _splits(hidden: torch.Tensor, n: int, cfg: dict) -> tuple[int, int]:
    """(number of column splits, columns per split) so the grid fills the GPU."""
    b_tiles = triton.cdiv(max(hidden.shape[0], 1), cfg["BLOCK_B"])
    if hidden.device.type == "cuda" and not triton_interpret():
        sms = torch.cuda.get_device_properties(hidden.device).multi_processor_count
        want = max(1, (4 * sms) // b_tiles)
    else:
        want = 2
    per = max(cfg["BLOCK_N"], triton.cdiv(max(n, 1), want))
    per = triton.cdiv(per, cfg["BLOCK_N"]) * cfg["BLOCK_N"]
    return triton.cdiv(max(n, 1), per), per


class LinearCETriton(torch.autograd.Function):
    """Per-row losses ``(B,)`` of the fused linear cross-entropy, Triton kernels."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, pos, adj, col_items, n_batch_cols, mask_samples):
        hidden = hidden.contiguous()
        weight = weight.contiguous()
        bsz, d = hidden.shape
        n = weight.shape[0]
        cfg = _cfg(hidden, n)
        splits, per = _splits(hidden, n, cfg)
        dev = hidden.device
        pos_items = col_items[pos].contiguous() if col_items is not None else pos
        dummy = pos
        m_part = torch.empty(splits, bsz, device=dev, dtype=torch.float32)
        s_part = torch.empty(splits, bsz, device=dev, dtype=torch.float32)
        if bsz > 0:
            grid = (triton.cdiv(bsz, cfg["BLOCK_B"]), splits)
            _lse_kernel[grid](
                hidden, weight, bias if bias is not None else dummy,
                adj if adj is not None else dummy,
                col_items if col_items is not None else dummy, pos, pos_items, m_part, s_part,
                bsz, n, d, n_batch_cols, per, hidden.stride(0), weight.stride(0),
                HAS_BIAS=bias is not None, HAS_ADJ=adj is not None,
                HAS_MASK=col_items is not None, MASK_SAMPLES=bool(mask_samples), **cfg,
            )
        mx = m_part.amax(0)  # (B,)
        mx_safe = mx.masked_fill(mx == float("-inf"), 0.0)
        lse = mx_safe + torch.log((s_part * torch.exp(m_part - mx_safe)).sum(0))
        zpos = (hidden[:, None, :].float() @ weight[pos].float()[:, :, None]).view(bsz)
        if bias is not None:
            zpos = zpos + bias[pos].float()
        if adj is not None:
            zpos = zpos - adj[pos]
        ctx.save_for_backward(hidden, weight, bias, pos, adj, col_items, pos_items, lse)
        ctx.meta = (n_batch_cols, bool(mask_samples))
        return lse - zpos

    @staticmethod
    def backward(ctx, g):
        hidden, weight, bias, pos, adj, col_items, pos_items, lse = ctx.saved_tensors
        n_batch_cols, mask_samples = ctx.meta
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias is not None
        g = g.float().contiguous()
        bsz, d = hidden.shape
        n = weight.shape[0]
        cfg = _cfg(hidden, n)
        dummy = pos
        common = dict(HAS_BIAS=bias is not None, HAS_ADJ=adj is not None,
                      HAS_MASK=col_items is not None, MASK_SAMPLES=mask_samples, **cfg)
        ptrs = (hidden, weight, bias if bias is not None else dummy,
                adj if adj is not None else dummy,
                col_items if col_items is not None else dummy, pos, pos_items, lse, g)
        dh = dw = db = None
        if need_h:
            splits, per = _splits(hidden, n, cfg)
            part = torch.zeros(splits, bsz, cfg["BLOCK_D"], device=hidden.device)
            if bsz > 0:
                grid = (triton.cdiv(bsz, cfg["BLOCK_B"]), splits)
                _dh_kernel[grid](*ptrs, part, bsz, n, d, n_batch_cols, per, hidden.stride(0),
                                 weight.stride(0), **common)
            dh = part.sum(0)[:, :d] - weight[pos].float() * g[:, None]
            dh = dh.to(hidden.dtype)
        if need_w or need_b:
            dw32 = torch.empty(n, d, device=hidden.device, dtype=torch.float32)
            db32 = torch.empty(n, device=hidden.device, dtype=torch.float32) if need_b else dummy
            grid = (triton.cdiv(n, cfg["BLOCK_N"]),)
            _dw_kernel[grid](*ptrs, dw32, db32, bsz, n, d, n_batch_cols, hidden.stride(0),
                             weight.stride(0), NEED_DB=need_b, **common)
            if need_w:
                dw32.index_add_(0, pos, hidden.float() * (-g)[:, None])
                dw = dw32.to(weight.dtype)
            if need_b:
                db32.index_add_(0, pos, -g)
                db = db32.to(bias.dtype)
        return dh, dw, db, None, None, None, None, None


def linear_ce_triton(hidden, weight, bias, pos, adj=None, col_items=None, n_batch_cols=0,
                     mask_samples=True):
    """Per-row losses ``(B,)`` (same arguments as ``linear_ce_reference``, no chunk)."""
    return LinearCETriton.apply(hidden, weight, bias, pos, adj, col_items, n_batch_cols,
                                mask_samples)

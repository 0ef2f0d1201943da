"""Triton decayed embedding-bag: ``Td`` is computed inside the reduction.

Grid ``(B, H tiles)``; program ``(b, t)`` walks the non-zeros of row ``b`` in blocks, computes
``Td(days_ago, decay)`` in registers, gathers the weight rows and accumulates in fp32. No
``(nnz,)`` weight tensor is written. The backward scatters ``Td * grad[row]`` into the weight
gradient with ``index_add_`` (the same sparse pattern as ``embedding_bag``'s backward).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rayrec.ops_kernels._dispatch import triton_interpret
from rayrec.ops_kernels.decayed_bag.reference import decay_weights

__all__ = ["decayed_bag_triton"]


@triton.jit
def _bag_kernel(w_ptr, idx_ptr, off_ptr, days_ptr, out_ptr, H, stride_w, decay,
                BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    hm = cols < H
    start = tl.load(off_ptr + row)
    end = tl.load(off_ptr + row + 1)
    acc = tl.zeros([BLOCK_H], tl.float32)
    for k0 in range(start, end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        km = ks < end
        item = tl.load(idx_ptr + ks, mask=km, other=0)
        a = tl.load(days_ptr + ks, mask=km, other=-1.0).to(tl.float32)
        td = tl.where(a >= 0, 1.0 / (1.0 + tl.maximum(a, 0.0) / decay), 0.0)
        td = tl.where(km, td, 0.0)
        w = tl.load(w_ptr + item[:, None] * stride_w + cols[None, :],
                    mask=km[:, None] & hm[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * td[:, None], 0)
    tl.store(out_ptr + row * H + cols, acc.to(out_ptr.dtype.element_ty), mask=hm)


class DecayedBagTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, item_idx, offsets, days_ago, decay):
        weight = weight.contiguous()
        b = offsets.numel() - 1
        hsz = weight.shape[1]
        out = torch.empty(b, hsz, device=weight.device, dtype=weight.dtype)
        if b > 0 and hsz > 0:
            bh = max(16, min(256, triton.next_power_of_2(hsz)))
            bk = 16 if triton_interpret() else 32
            _bag_kernel[(b, triton.cdiv(hsz, bh))](
                weight, item_idx, offsets, days_ago, out, hsz, weight.stride(0), float(decay),
                BLOCK_K=bk, BLOCK_H=bh,
            )
        ctx.save_for_backward(item_idx, offsets, days_ago)
        ctx.meta = (weight.shape, weight.dtype, float(decay))
        return out

    @staticmethod
    def backward(ctx, g):
        item_idx, offsets, days_ago = ctx.saved_tensors
        shape, dtype, decay = ctx.meta
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        counts = offsets[1:] - offsets[:-1]
        rows = torch.repeat_interleave(torch.arange(counts.numel(), device=g.device), counts)
        td = decay_weights(days_ago, decay, torch.float32)
        dw = torch.zeros(shape, device=g.device, dtype=torch.float32)
        dw.index_add_(0, item_idx, g.float()[rows] * td[:, None])
        return dw.to(dtype), None, None, None, None


def decayed_bag_triton(weight, item_idx, offsets, days_ago, decay):
    """(B, H); same contract as ``decayed_bag_reference``."""
    return DecayedBagTriton.apply(weight, item_idx, offsets, days_ago, decay)

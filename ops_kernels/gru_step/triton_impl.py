"""Triton GRU step: the gate nonlinearities, the reset mask and the update in two passes.

The two matmuls (``h @ Wrz`` and ``(r h) @ Wh``) stay with cuBLAS; everything elementwise
around them is fused: ``_gates_kernel`` applies the reset mask, the r/z sigmoids and forms
``r * h`` in one pass over ``(B, H)``; ``_update_kernel`` does ``tanh`` and the interpolation
in another. The backward uses the saved ``r, z, c`` with closed-form gradients (torch
elementwise + the two transposed matmuls), no autograd graph of intermediates.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["gru_step_triton"]


@triton.jit
def _gates_kernel(gx_ptr, gh_ptr, h_ptr, reset_ptr, r_ptr, z_ptr, hm_ptr, rh_ptr, B, H,
                  stride_gx, stride_gh, HAS_RESET: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    m = cols < H
    h = tl.load(h_ptr + row * H + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_RESET:
        rs = tl.load(reset_ptr + row)
        h = tl.where(rs != 0, 0.0, h)
    xr = tl.load(gx_ptr + row * stride_gx + cols, mask=m, other=0.0).to(tl.float32)
    xz = tl.load(gx_ptr + row * stride_gx + H + cols, mask=m, other=0.0).to(tl.float32)
    hr = tl.load(gh_ptr + row * stride_gh + cols, mask=m, other=0.0).to(tl.float32)
    hz = tl.load(gh_ptr + row * stride_gh + H + cols, mask=m, other=0.0).to(tl.float32)
    r = tl.sigmoid(xr + hr)
    z = tl.sigmoid(xz + hz)
    tl.store(r_ptr + row * H + cols, r, mask=m)
    tl.store(z_ptr + row * H + cols, z, mask=m)
    tl.store(hm_ptr + row * H + cols, h, mask=m)
    tl.store(rh_ptr + row * H + cols, (r * h).to(rh_ptr.dtype.element_ty), mask=m)


@triton.jit
def _update_kernel(gx_ptr, u_ptr, hm_ptr, z_ptr, c_ptr, out_ptr, B, H, stride_gx,
                   BLOCK_H: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    m = cols < H
    xh = tl.load(gx_ptr + row * stride_gx + 2 * H + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row * H + cols, mask=m, other=0.0).to(tl.float32)
    a = xh + u
    # tanh(a) = 1 - 2 / (exp(2a) + 1), stable for large |a|
    c = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
    h = tl.load(hm_ptr + row * H + cols, mask=m, other=0.0)
    z = tl.load(z_ptr + row * H + cols, mask=m, other=0.0)
    tl.store(c_ptr + row * H + cols, c, mask=m)
    tl.store(out_ptr + row * H + cols, (h + z * (c - h)).to(out_ptr.dtype.element_ty), mask=m)


class GRUStepTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, h_prev, w_rz, w_h, reset):
        gx = gx.contiguous()
        h_prev = h_prev.contiguous()
        b, hsz = h_prev.shape
        dev = h_prev.device
        f32 = dict(device=dev, dtype=torch.float32)
        r = torch.empty(b, hsz, **f32)
        z = torch.empty(b, hsz, **f32)
        hm = torch.empty(b, hsz, **f32)
        c = torch.empty(b, hsz, **f32)
        rh = torch.empty(b, hsz, device=dev, dtype=h_prev.dtype)
        out = torch.empty(b, hsz, device=dev, dtype=h_prev.dtype)
        if b > 0:
            gh = (h_prev if reset is None else h_prev * (~reset).to(h_prev.dtype)[:, None]) @ w_rz
            gh = gh.contiguous()
            bh = max(16, min(1024, triton.next_power_of_2(hsz)))
            grid = (b, triton.cdiv(hsz, bh))
            rs = reset.to(torch.int8).contiguous() if reset is not None else h_prev
            _gates_kernel[grid](gx, gh, h_prev, rs, r, z, hm, rh, b, hsz, gx.stride(0),
                                gh.stride(0), HAS_RESET=reset is not None, BLOCK_H=bh)
            u = (rh @ w_h).contiguous()
            _update_kernel[grid](gx, u, hm, z, c, out, b, hsz, gx.stride(0), BLOCK_H=bh)
        ctx.save_for_backward(hm, r, z, c, rh, w_rz, w_h, reset)
        ctx.dtypes = (gx.dtype, h_prev.dtype)
        return out

    @staticmethod
    def backward(ctx, g):
        hm, r, z, c, rh, w_rz, w_h, reset = ctx.saved_tensors
        gx_dtype, h_dtype = ctx.dtypes
        g = g.float()
        wrz, wh = w_rz.float(), w_h.float()
        da = g * z * (1.0 - c * c)  # d(candidate pre-activation), (B, H)
        dz = g * (c - hm)
        drh = da @ wh.t()  # (B, H)
        dwh = rh.float().t() @ da
        dh = g * (1.0 - z) + drh * r
        dpre = torch.cat([drh * hm * r * (1.0 - r), dz * z * (1.0 - z)], dim=1)  # (B, 2H)
        dh = dh + dpre @ wrz.t()
        dwrz = hm.t() @ dpre
        if reset is not None:
            dh = dh * (~reset).to(dh.dtype)[:, None]
        dgx = torch.cat([dpre, da], dim=1).to(gx_dtype)
        return dgx, dh.to(h_dtype), dwrz.to(w_rz.dtype), dwh.to(w_h.dtype), None


def gru_step_triton(gx, h_prev, w_rz, w_h, reset=None):
    """h_new (B, H); same contract as ``gru_step_reference``."""
    return GRUStepTriton.apply(gx, h_prev, w_rz, w_h, reset)

"""Triton scoring + top-K: scores never leave registers.

Grid ``(B tiles, catalog splits)``. Each program scores its rows against its share of the
catalog tile by tile (``tl.dot``), packs every score with its item index into one int64 key
(order-preserving int32 image of the fp32 score in the high half, ``2^32 - 1 - item`` in the
low half, so equal scores prefer the lower item), keeps a running ``KP`` best keys per row
(``tl.topk`` of the tile, then ``tl.topk`` of the running and tile bests joined) and writes
``(splits, B, KP)`` keys. Torch merges the splits (``topk`` over ``splits * KP`` keys per
row), decodes them, and removes excluded items. Exclusions are handled by *over-fetching*:
``KP >= k + E`` where ``E`` is the width of the padded exclusion tensor, so after dropping at
most ``E`` excluded items per row ``k`` remain. ``KP`` is limited to :data:`MAX_KP`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rayrec.ops_kernels._dispatch import triton_interpret

__all__ = ["MAX_KP", "topk_triton"]

MAX_KP = 256
_INT64_MIN = -(2**63)


@triton.jit
def _topk_kernel(h_ptr, w_ptr, b_ptr, out_ptr, B, N, D, cols_per_split, stride_h, stride_w,
                 HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
                 KP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    bmask = rb < B
    h = tl.load(h_ptr + rb[:, None] * stride_h + rd[None, :],
                mask=bmask[:, None] & (rd[None, :] < D), other=0.0)
    if DOT_F32:
        h = h.to(tl.float32)
    lowest = tl.full([BLOCK_B, KP], -9223372036854775808, tl.int64)
    run = lowest
    n_start = pid_s * cols_per_split
    n_end = tl.minimum(N, n_start + cols_per_split)
    for n0 in range(n_start, n_end, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        nmask = rn < n_end
        w = tl.load(w_ptr + rn[:, None] * stride_w + rd[None, :],
                    mask=nmask[:, None] & (rd[None, :] < D), other=0.0)
        if DOT_F32:
            w = w.to(tl.float32)
        z = tl.dot(h, tl.trans(w), input_precision=PRECISION)  # (BB, BN) fp32
        if HAS_BIAS:
            z += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        bits = z.to(tl.int32, bitcast=True)
        key32 = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # order-preserving signed image
        low = 4294967295 - rn.to(tl.int64)
        key = (key32.to(tl.int64) << 32) | low[None, :]
        key = tl.where(nmask[None, :], key, -9223372036854775808)
        best = tl.topk(key, KP)  # (BB, KP)
        both = tl.reshape(tl.join(run, best), [BLOCK_B, 2 * KP])
        run = tl.topk(both, KP)
    offs = pid_s * B * KP + rb[:, None] * KP + tl.arange(0, KP)[None, :]
    tl.store(out_ptr + offs, run, mask=bmask[:, None])


def _decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 keys -> (fp32 values, long indices); the sentinel -> (-inf, -1)."""
    empty = keys == _INT64_MIN
    key32 = (keys >> 32).to(torch.int32)
    bits = key32 ^ ((key32 >> 31) & 0x7FFFFFFF)
    vals = bits.view(torch.float32).masked_fill(empty, float("-inf"))
    idx = (4294967295 - (keys & 0xFFFFFFFF)).masked_fill(empty, -1)
    return vals, idx


@torch.no_grad()
def topk_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (B, k) fp32, indices (B, k) long); see the module docstring."""
    hidden = hidden.contiguous()
    weight = weight.contiguous()
    bsz, d = hidden.shape
    n = weight.shape[0]
    dev = hidden.device
    e = 0 if exclude is None else exclude.shape[1]
    kp = max(16, triton.next_power_of_2(k + e))
    if kp > MAX_KP:
        raise ValueError(f"topk_triton: k + exclusions = {k + e} exceeds {MAX_KP}")
    interp = triton_interpret() or dev.type != "cuda"
    block_d = max(16, triton.next_power_of_2(d))
    bb = 16
    bn = max(kp, 32 if interp else 128)
    dot_f32 = interp or hidden.dtype == torch.float32
    precision = (
        "tf32"
        if hidden.dtype == torch.float32 and not interp and torch.backends.cuda.matmul.allow_tf32
        else "ieee"
    )
    b_tiles = triton.cdiv(max(bsz, 1), bb)
    if dev.type == "cuda" and not triton_interpret():
        want = max(1, 4 * torch.cuda.get_device_properties(dev).multi_processor_count // b_tiles)
    else:
        want = 2
    per = triton.cdiv(max(bn, triton.cdiv(n, want)), bn) * bn
    splits = triton.cdiv(n, per)
    keys = torch.empty(splits, bsz, kp, dtype=torch.int64, device=dev)
    if bsz > 0:
        _topk_kernel[(b_tiles, splits)](
            hidden, weight, bias if bias is not None else hidden, keys, bsz, n, d, per,
            hidden.stride(0), weight.stride(0), HAS_BIAS=bias is not None, DOT_F32=dot_f32,
            PRECISION=precision, KP=kp, BLOCK_B=bb, BLOCK_N=bn, BLOCK_D=block_d,
        )
    keys = keys.permute(1, 0, 2).reshape(bsz, splits * kp)
    if keys.shape[1] > kp:
        keys = keys.topk(kp, dim=1).values  # (B, KP), sorted
    if e:
        _, idx = _decode(keys)
        hit = (idx.unsqueeze(2) == exclude.unsqueeze(1)).any(2) & (idx >= 0)  # (B, KP)
        keys = keys.masked_fill(hit, _INT64_MIN)
    keys = keys.topk(k, dim=1).values if keys.shape[1] >= k else keys
    return _decode(keys)

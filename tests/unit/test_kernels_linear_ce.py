"""Fused linear cross-entropy: chunked reference and Triton (interpreted) vs naive torch.

Tolerances: fp32 inputs -- loss and gradients within rtol 1e-5 / atol 1e-5 x max|value|
(reductions in a different order); bf16 inputs -- the ops compute in fp32 from the bf16
values, the oracle is fp32 torch on the same (upcast) values, loss rtol 1e-4, gradients
(rounded to bf16 on output) rtol/atol 1e-2 x max|value|.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before any rayrec triton_impl / triton.jit import

import pytest
import torch
import torch.nn.functional as F

from rayrec.models.losses import cross_entropy, negative_mask
from rayrec.ops_kernels import linear_cross_entropy, sampled_linear_cross_entropy
from tests.unit._triton_interp import triton_mark, triton_skip_reason

_SKIP = triton_skip_reason("linear_ce", "_lse_kernel")
needs_triton = triton_mark(_SKIP)


def _close(a, b, rtol, atol):
    a, b = a.detach().float(), b.detach().float()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale)


def _inputs(b, n, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, d, generator=g).to(dtype)
    w = (torch.randn(n, d, generator=g) * 0.5).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    t = torch.randint(0, n, (b,), generator=g)
    lq = torch.randn(n, generator=g)
    return h, w, bias, t, lq


def _grads(fn, *tensors):
    ts = [x.detach().clone().requires_grad_() for x in tensors]
    loss = fn(*ts)
    loss.backward()
    return loss.detach(), [x.grad for x in ts]


def _naive_full(h, w, b, t, lq, logq):
    z = h.float() @ w.float().t() + b.float()
    if lq is not None:
        z = z - logq * lq
    return F.cross_entropy(z, t)


SHAPES = [(7, 100, 20, 13), (16, 64, 32, 64), (3, 1, 8, 4), (5, 257, 16, 100)]  # (B, N, D, chunk)


@pytest.mark.parametrize("b,n,d,chunk", SHAPES)
@pytest.mark.parametrize("use_logq", [False, True])
def test_reference_matches_naive_fp32(b, n, d, chunk, use_logq):
    h, w, bias, t, lq = _inputs(b, n, d, torch.float32)
    lq = lq if use_logq else None
    ref, ref_g = _grads(lambda h, w, bb: _naive_full(h, w, bb, t, lq, 0.7), h, w, bias)
    out, out_g = _grads(
        lambda h, w, bb: linear_cross_entropy(h, w, t, bb, lq, 0.7, chunk_size=chunk,
                                              backend="reference"),
        h, w, bias,
    )
    _close(out, ref, 1e-5, 1e-5)
    for a, e in zip(out_g, ref_g):
        _close(a, e, 1e-5, 1e-5)


def test_reference_bf16_and_no_bias():
    h, w, _, t, _ = _inputs(9, 130, 24, torch.bfloat16)
    ref, ref_g = _grads(lambda h, w: _naive_full(h, w, torch.zeros(()), t, None, 0), h, w)
    out, out_g = _grads(lambda h, w: linear_cross_entropy(h, w, t, chunk_size=50,
                                                         backend="reference"), h, w)
    assert out_g[0].dtype == torch.bfloat16 and out_g[1].dtype == torch.bfloat16
    _close(out, ref, 1e-4, 1e-4)
    for a, e in zip(out_g, ref_g):
        _close(a, e, 1e-2, 1e-2)


def test_reductions_and_empty_batch():
    h, w, bias, t, _ = _inputs(6, 40, 8, torch.float32)
    per = linear_cross_entropy(h, w, t, bias, reduction="none", chunk_size=7)
    assert per.shape == (6,)
    _close(linear_cross_entropy(h, w, t, bias, reduction="sum"), per.sum(), 1e-6, 1e-6)
    _close(per, F.cross_entropy(h @ w.t() + bias, t, reduction="none"), 1e-5, 1e-5)
    # B = 0: zero loss, zero gradients of the right shape
    he = torch.zeros(0, 8, requires_grad=True)
    we = w.clone().requires_grad_()
    loss = linear_cross_entropy(he, we, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and we.grad.shape == w.shape and float(we.grad.abs().sum()) == 0.0


def test_bad_inputs_name_the_field():
    h, w, bias, t, _ = _inputs(4, 10, 8, torch.float32)
    with pytest.raises(ValueError, match="targets out of range"):
        linear_cross_entropy(h, w, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="weight must be"):
        linear_cross_entropy(h, w[:, :4], t)
    with pytest.raises(ValueError, match="bias must be"):
        linear_cross_entropy(h, w, t, bias[:3])
    with pytest.raises(ValueError, match="log_q must be"):
        linear_cross_entropy(h, w, t, log_q=torch.zeros(3))
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, w, t, reduction="avg")
    with pytest.raises(ValueError, match="cols must be"):
        sampled_linear_cross_entropy(h, w, torch.tensor([1, 2]))


def _naive_sampled(h, w, bias, cols, lqc, mask_hits, msh):
    s = h.float() @ w.float()[cols].t() + bias.float()[cols]
    b = h.shape[0]
    valid = negative_mask(cols[:b], cols, msh) if mask_hits else None
    return cross_entropy(s, valid, lqc, 0.5)


def _sampled_cols(b, n, s, seed=1):
    g = torch.Generator().manual_seed(seed)
    cols = torch.randint(0, n, (b + s,), generator=g)
    if b > 3:
        cols[3] = cols[1]  # a duplicate target in the mini-batch
    if s > 0 and b > 2:
        cols[-1] = cols[2]  # an extra sample hitting a target
    return cols


@pytest.mark.parametrize("mask_hits,msh", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("b,s,chunk", [(6, 11, 5), (4, 0, 3), (8, 30, 64)])
def test_sampled_matches_models_losses(mask_hits, msh, b, s, chunk):
    h, w, bias, _, _ = _inputs(b, 12, 16, torch.float32)
    cols = _sampled_cols(b, 12, s)
    lqc = torch.randn(b + s)
    ref, ref_g = _grads(lambda h, w, bb: _naive_sampled(h, w, bb, cols, lqc, mask_hits, msh),
                        h, w, bias)
    out, out_g = _grads(
        lambda h, w, bb: sampled_linear_cross_entropy(
            h, w, cols, bb, lqc, 0.5, mask_hits=mask_hits, mask_sample_hits=msh,
            chunk_size=chunk, backend="reference"),
        h, w, bias,
    )
    _close(out, ref, 1e-5, 1e-5)
    for a, e in zip(out_g, ref_g):
        _close(a, e, 1e-5, 1e-5)


@needs_triton
@pytest.mark.parametrize("b,n,d", [(7, 100, 20), (17, 33, 16), (1, 5, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_reference(b, n, d, dtype):
    h, w, bias, t, lq = _inputs(b, n, d, dtype)
    fn = {be: (lambda h, w, bb, be=be: linear_cross_entropy(h, w, t, bb, lq, 0.3, backend=be))
          for be in ("reference", "triton")}
    ref, ref_g = _grads(fn["reference"], h, w, bias)
    out, out_g = _grads(fn["triton"], h, w, bias)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    _close(out, ref, 1e-5, 1e-5)
    for a, e in zip(out_g, ref_g):
        assert a.dtype == e.dtype == dtype
        _close(a, e, tol, tol)


@needs_triton
def test_triton_sampled_and_empty():
    b, s = 6, 11
    h, w, bias, _, _ = _inputs(b, 12, 16, torch.float32)
    cols = _sampled_cols(b, 12, s)
    lqc = torch.randn(b + s)
    for msh in (True, False):
        ref, ref_g = _grads(lambda h, w, bb, msh=msh: _naive_sampled(h, w, bb, cols, lqc, True, msh),
                            h, w, bias)
        out, out_g = _grads(
            lambda h, w, bb, msh=msh: sampled_linear_cross_entropy(
                h, w, cols, bb, lqc, 0.5, mask_sample_hits=msh, backend="triton"),
            h, w, bias,
        )
        _close(out, ref, 1e-5, 1e-5)
        for a, e in zip(out_g, ref_g):
            _close(a, e, 1e-5, 1e-5)
    he = torch.zeros(0, 16, requires_grad=True)
    we = w.clone().requires_grad_()
    loss = linear_cross_entropy(he, we, torch.zeros(0, dtype=torch.long), backend="triton")
    loss.backward()
    assert loss.item() == 0.0 and float(we.grad.abs().sum()) == 0.0


def test_reference_late_huge_logits_take_the_overflow_path():
    # the last chunk's logits are ~hundreds above the first chunks': exp(z - running lse)
    # would overflow, so the reference must switch to its max-shifted path
    h, w, bias, t, _ = _inputs(5, 60, 8, torch.float32)
    w[50:] *= 100.0
    ref, ref_g = _grads(lambda h, w, bb: _naive_full(h, w, bb, t, None, 0), h, w, bias)
    assert float((h @ w[50:].t()).max()) > 150.0
    out, out_g = _grads(lambda h, w, bb: linear_cross_entropy(h, w, t, bb, chunk_size=10,
                                                             backend="reference"), h, w, bias)
    assert torch.isfinite(out)
    _close(out, ref, 1e-5, 1e-5)
    for a, e in zip(out_g, ref_g):
        _close(a, e, 1e-5, 1e-5)

"""Fused sampled ranking losses vs ``rayrec.models.losses`` (autograd), forward and backward.

Tolerances: fp32 -- loss and gradient within rtol 1e-5 / atol 1e-5 x max|value| (the fused
gradients are closed-form, the oracle's come from autograd); bf16 scores -- the ops compute
in fp32 and round the gradient to bf16: rtol/atol 1e-2 x max|value| against the fp32 oracle
on the same values.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before any rayrec triton_impl / triton.jit import

import pytest
import torch

from rayrec.models import losses as L
from rayrec.ops_kernels import sampled_ranking_loss
from tests.unit._triton_interp import backends, triton_skip_reason

_SKIP = triton_skip_reason("ranking_losses", "_fwd_kernel")
BACKENDS = backends(_SKIP)


def _oracle(s, name, valid, lq):
    if name == "bpr-max":
        return L.bpr_max(s, valid, 0.7)
    if name == "top1-max":
        return L.top1_max(s, valid)
    return L.cross_entropy(s, valid, lq, 0.5)


def _case(b, s, n_items, seed=0):
    g = torch.Generator().manual_seed(seed)
    cols = torch.randint(0, n_items, (b + s,), generator=g)
    scores = torch.randn(b, b + s, generator=g) * 2
    lq = torch.randn(b + s, generator=g)
    return scores, cols, lq


def _run(fn, s0):
    s = s0.detach().clone().requires_grad_()
    loss = fn(s)
    loss.backward()
    return loss.detach().float(), s.grad.float()


def _close(a, b, tol):
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["bpr-max", "top1-max", "cross-entropy"])
@pytest.mark.parametrize("b,s,n_items", [(6, 9, 8), (5, 0, 3), (1, 4, 10), (9, 40, 1000)])
@pytest.mark.parametrize("use_cols,msh", [(True, True), (True, False), (False, True)])
def test_matches_models_losses(backend, name, b, s, n_items, use_cols, msh):
    scores, cols, lq = _case(b, s, n_items)
    valid = L.negative_mask(cols[:b], cols, msh) if use_cols else None
    ref = _run(lambda x: _oracle(x, name, valid, lq), scores)
    out = _run(lambda x: sampled_ranking_loss(x, name, cols if use_cols else None, msh, 0.7, lq,
                                              0.5, backend=backend), scores)
    _close(out[0], ref[0], 1e-5)
    _close(out[1], ref[1], 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["bpr-max", "top1-max", "cross-entropy"])
def test_bf16_and_rows_without_negatives(backend, name):
    # every column is the same item: no row has a negative (the ragged extreme)
    b = 4
    cols = torch.full((b + 2,), 3)
    scores = torch.randn(b, b + 2)
    valid = L.negative_mask(cols[:b], cols, True)
    ref = _run(lambda x: _oracle(x, name, valid, None), scores)
    out = _run(lambda x: sampled_ranking_loss(x, name, cols, backend=backend), scores)
    _close(out[0], ref[0], 1e-5)
    _close(out[1], ref[1], 1e-5)
    s16, cols16, lq = _case(6, 10, 50, seed=2)
    s16 = s16.bfloat16()
    ref = _run(lambda x: _oracle(x.float(), name, L.negative_mask(cols16[:6], cols16), lq), s16)
    out = _run(lambda x: sampled_ranking_loss(x, name, cols16, True, 0.7, lq, 0.5,
                                              backend=backend), s16)
    _close(out[0], ref[0], 1e-2)
    _close(out[1], ref[1], 1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_errors(backend):
    out = sampled_ranking_loss(torch.zeros(0, 5, requires_grad=True), "bpr-max", backend=backend)
    assert out.item() == 0.0
    with pytest.raises(ValueError, match="loss must be"):
        sampled_ranking_loss(torch.zeros(2, 3), "bpr")
    with pytest.raises(ValueError, match="scores must be"):
        sampled_ranking_loss(torch.zeros(3, 2), "top1-max")
    with pytest.raises(ValueError, match="cols must be"):
        sampled_ranking_loss(torch.zeros(2, 3), "top1-max", cols=torch.zeros(2))

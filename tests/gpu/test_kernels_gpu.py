"""Triton kernels vs their references on CUDA (marked ``gpu``; skipped without CUDA).

Run in their own pytest process (``pytest tests/gpu -m gpu``): the unit tests switch on
``TRITON_INTERPRET=1``, and kernels decorated under it stay interpreted. Tolerances: fp32
with TF32 off -- rtol/atol 1e-4 x max|value|; bf16 inputs -- 2e-2 x max|value|.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(autouse=True)
def _compiled_triton(monkeypatch):
    pytest.importorskip("triton")
    from triton.runtime.interpreter import InterpretedFunction

    from rayrec.ops_kernels.linear_ce import triton_impl

    if isinstance(triton_impl._lse_kernel, InterpretedFunction):
        pytest.skip("triton kernels are interpreted in this process; run tests/gpu on its own")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    yield


def _close(a, b, tol):
    a, b = a.detach().float(), b.detach().float()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)


def _grads(fn, *ts):
    ts = [t.detach().clone().requires_grad_() for t in ts]
    out = fn(*ts)
    out.backward()
    return out.detach(), [t.grad for t in ts]


@pytest.mark.parametrize("b,n,d", [(256, 100_003, 128), (33, 4097, 64), (1, 10, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_ce(b, n, d, dtype):
    from rayrec.ops_kernels import linear_cross_entropy

    dev = "cuda"
    h = torch.randn(b, d, device=dev).to(dtype)
    w = (torch.randn(n, d, device=dev) * 0.1).to(dtype)
    bias = torch.randn(n, device=dev).to(dtype)
    t = torch.randint(0, n, (b,), device=dev)
    lq = torch.randn(n, device=dev)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    ref = _grads(lambda *x: linear_cross_entropy(*x[:2], t, x[2], lq, backend="reference"),
                 h, w, bias)
    out = _grads(lambda *x: linear_cross_entropy(*x[:2], t, x[2], lq, backend="triton"),
                 h, w, bias)
    _close(out[0], ref[0], tol)
    for a, e in zip(out[1], ref[1]):
        _close(a, e, tol)


def test_sampled_linear_ce():
    from rayrec.ops_kernels import sampled_linear_cross_entropy

    dev = "cuda"
    b, s, n, d = 64, 2048, 5000, 96
    h = torch.randn(b, d, device=dev)
    w = torch.randn(n, d, device=dev) * 0.1
    cols = torch.randint(0, n, (b + s,), device=dev)
    lq = torch.randn(b + s, device=dev)
    ref = _grads(lambda h, w: sampled_linear_cross_entropy(h, w, cols, log_q=lq,
                                                          backend="reference"), h, w)
    out = _grads(lambda h, w: sampled_linear_cross_entropy(h, w, cols, log_q=lq,
                                                          backend="triton"), h, w)
    _close(out[0], ref[0], 1e-4)
    for a, e in zip(out[1], ref[1]):
        _close(a, e, 1e-4)


@pytest.mark.parametrize("k,e", [(20, 0), (100, 50), (1, 3)])
def test_topk(k, e):
    from rayrec.ops_kernels import topk_scores

    dev = "cuda"
    h = torch.randn(128, 64, device=dev)
    w = torch.randn(200_001, 64, device=dev)
    bias = torch.randn(200_001, device=dev)
    excl = torch.randint(0, 200_001, (128, e), device=dev) if e else None
    rv, ri = topk_scores(h, w, k, bias, excl, backend="reference")
    tv, ti = topk_scores(h, w, k, bias, excl, backend="triton")
    _close(tv, rv, 1e-4)
    assert (ti == ri).float().mean() > 0.99  # rare near-ties may swap


@pytest.mark.parametrize("name", ["bpr-max", "top1-max", "cross-entropy"])
def test_ranking_losses(name):
    from rayrec.ops_kernels import sampled_ranking_loss

    dev = "cuda"
    b, s = 512, 2048
    scores = torch.randn(b, b + s, device=dev)
    cols = torch.randint(0, 3000, (b + s,), device=dev)
    lq = torch.randn(b + s, device=dev)
    ref = _grads(lambda x: sampled_ranking_loss(x, name, cols, True, 1.0, lq,
                                                backend="reference"), scores)
    out = _grads(lambda x: sampled_ranking_loss(x, name, cols, True, 1.0, lq,
                                                backend="triton"), scores)
    _close(out[0], ref[0], 1e-4)
    _close(out[1][0], ref[1][0], 1e-4)


def test_gru_step_and_decayed_bag():
    from rayrec.ops_kernels import decayed_embedding_bag, gru_step

    dev = "cuda"
    b, hs = 512, 100
    ts = [torch.randn(b, 3 * hs, device=dev), torch.randn(b, hs, device=dev),
          torch.randn(hs, 2 * hs, device=dev) * 0.1, torch.randn(hs, hs, device=dev) * 0.1]
    reset = torch.rand(b, device=dev) < 0.2
    ref = _grads(lambda *x: gru_step(*x, reset, backend="reference").square().sum(), *ts)
    out = _grads(lambda *x: gru_step(*x, reset, backend="triton").square().sum(), *ts)
    _close(out[0], ref[0], 1e-4)
    for a, e in zip(out[1], ref[1]):
        _close(a, e, 1e-4)
    lengths = torch.randint(0, 50, (256,), device=dev)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), lengths.cumsum(0)])
    nnz = int(offsets[-1])
    items = torch.randint(0, 10_000, (nnz,), device=dev)
    days = torch.rand(nnz, device=dev) * 700
    w = torch.randn(10_000, 128, device=dev)
    ref = _grads(lambda w: decayed_embedding_bag(w, items, offsets, days, 40.0,
                                                 backend="reference").square().sum(), w)
    out = _grads(lambda w: decayed_embedding_bag(w, items, offsets, days, 40.0,
                                                 backend="triton").square().sum(), w)
    _close(out[0], ref[0], 1e-4)
    _close(out[1][0], ref[1][0], 1e-4)

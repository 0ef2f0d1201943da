"""Fused GRU step and decayed embedding-bag vs their oracles (GRU4Rec's own layer math and
``rayrec.models.daily_nn``'s EmbeddingBag + time_decay), forward and backward.

Tolerances: fp32 rtol/atol 1e-5 x max|value|; bf16 inputs rtol/atol 2e-2 x max|value|
(the oracle runs in fp32 on the same bf16 values).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before any rayrec triton_impl / triton.jit import

import pytest
import torch
import torch.nn.functional as F

from rayrec.models.daily_nn import DailyNN, DailyNNConfig, SparseBatch, time_decay
from rayrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from rayrec.ops_kernels import decayed_embedding_bag, gru_step
from tests.unit._triton_interp import backends, triton_skip_reason

_SKIP = triton_skip_reason("gru_step", "_gates_kernel")
BACKENDS = backends(_SKIP)


def _close(a, b, tol):
    a, b = a.detach().float(), b.detach().float()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)


def _gru_oracle(gx, h_prev, w_rz, w_h, reset):
    """The layer math of GRU4Rec.forward, with GRU4RecScorer.step's reset."""
    hs = h_prev.shape[1]
    h = h_prev * (~reset).float().unsqueeze(1)
    rz = torch.sigmoid(gx[:, : 2 * hs] + h @ w_rz)
    r, z = rz[:, :hs], rz[:, hs:]
    c = torch.tanh(gx[:, 2 * hs :] + (r * h) @ w_h)
    return (1 - z) * h + z * c


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,hs", [(5, 12), (1, 3), (0, 4), (9, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gru_step_matches_oracle(backend, b, hs, dtype):
    g = torch.Generator().manual_seed(b * 100 + hs)
    ts = [torch.randn(b, 3 * hs, generator=g), torch.randn(b, hs, generator=g),
          torch.randn(hs, 2 * hs, generator=g) * 0.5, torch.randn(hs, hs, generator=g) * 0.5]
    reset = torch.rand(b, generator=g) < 0.4
    up = torch.randn(b, hs, generator=g)
    ts = [t.to(dtype) for t in ts]
    a = [t.clone().requires_grad_() for t in ts]
    out = gru_step(*a, reset, backend=backend)
    (out.float() * up).sum().backward()
    e = [t.float().clone().requires_grad_() for t in ts]
    ref = _gru_oracle(*e, reset)
    (ref * up).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert out.dtype == dtype and out.shape == (b, hs)
    _close(out, ref, tol)
    for x, y in zip(a, e):
        assert x.grad.dtype == dtype
        _close(x.grad, y.grad, tol)


def test_gru_step_reproduces_gru4rec_layer():
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecConfig(layers=(8,), dropout_p_hidden=0.0), n_items=20).eval()
    items = torch.tensor([1, 5, 7])
    h0 = [torch.randn(3, 8)]
    out, _ = model(items, h0)
    gx = torch.addmm(model.b[0], model.Wy.index_select(0, items), model.Wx[0])
    mine = gru_step(gx, h0[0], model.Wrz[0], model.Wh[0], torch.tensor([False, True, False]))
    ref_reset = h0[0].clone()
    ref_reset[1] = 0
    out_reset, _ = model(items, [ref_reset])
    _close(mine, out_reset, 1e-6)
    assert not torch.allclose(out, out_reset)  # the reset mattered


def test_gru_step_errors():
    with pytest.raises(ValueError, match="gx must be"):
        gru_step(torch.zeros(2, 5), torch.zeros(2, 2), torch.zeros(2, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="reset must be"):
        gru_step(torch.zeros(2, 6), torch.zeros(2, 2), torch.zeros(2, 4), torch.zeros(2, 2),
                 torch.zeros(3, dtype=torch.bool))


def _bag_case(rows, p, hs, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(rows, dtype=torch.long)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    nnz = int(offsets[-1])
    items = torch.randint(0, p, (nnz,), generator=g)
    days = torch.rand(nnz, generator=g) * 400 - 20  # some purchases after ref: weight 0
    w = torch.randn(p, hs, generator=g)
    return w, items, offsets, days


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows", [[3, 0, 5, 1], [0], [40], [1, 2, 0, 0, 7, 33]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decayed_bag_matches_embedding_bag(backend, rows, dtype):
    w, items, offsets, days = _bag_case(rows, 30, 20)
    w = w.to(dtype)
    up = torch.randn(len(rows), 20)
    a = w.clone().requires_grad_()
    out = decayed_embedding_bag(a, items, offsets, days, 40.0, backend=backend)
    (out.float() * up).sum().backward()
    e = w.float().clone().requires_grad_()
    ref = F.embedding_bag(items, e, offsets, mode="sum", include_last_offset=True,
                          per_sample_weights=time_decay(days, 40.0).float())
    (ref * up).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert out.shape == (len(rows), 20) and out.dtype == dtype
    _close(out, ref, tol)
    _close(a.grad, e.grad, tol)


def test_decayed_bag_reproduces_daily_input_layer():
    torch.manual_seed(0)
    cfg = DailyNNConfig(decay="parametric", ti=40.0)
    model = DailyNN(25, cfg)
    batch = SparseBatch.from_lists([[1, 4, 7], [], [2]], [[0.0, 10.0, 100.0], [], [3.0]])
    w = model.input_weights(batch)
    ref = model.input_layer(batch.item_idx, batch.offsets, per_sample_weights=w)
    mine = decayed_embedding_bag(model.input_layer.weight, batch.item_idx, batch.offsets,
                                 batch.days_ago, model.weights.ti)
    _close(mine, ref, 1e-6)


def test_decayed_bag_errors():
    w = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="decay must be"):
        decayed_embedding_bag(w, torch.tensor([1]), torch.tensor([0, 1]), torch.tensor([1.0]), 0)
    with pytest.raises(ValueError, match="offsets must start"):
        decayed_embedding_bag(w, torch.tensor([1]), torch.tensor([0, 2]), torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match="item_idx out of range"):
        decayed_embedding_bag(w, torch.tensor([5]), torch.tensor([0, 1]), torch.tensor([1.0]), 4)

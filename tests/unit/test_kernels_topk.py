"""Fused scoring + top-K with exclusions: chunked reference and Triton (interpreted) vs the
full ``(B, N)`` torch oracle. Scores are continuous random values (no ties), so indices must
match exactly; values within 1e-5 x max|score| (fp32) or 1e-2 (bf16 inputs, fp32 scores)."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before any rayrec triton_impl / triton.jit import

import pytest
import torch

from rayrec.ops_kernels import KernelUnavailableError, pad_exclusions, topk_scores
from tests.unit._triton_interp import triton_mark, triton_skip_reason

_SKIP = triton_skip_reason("topk", "_topk_kernel")
needs_triton = triton_mark(_SKIP)


def _oracle(h, w, k, bias, excl):
    s = h.float() @ w.float().t()
    if bias is not None:
        s = s + bias.float()
    for i, row in enumerate(excl or []):
        if len(row):
            s[i, list(row)] = float("-inf")
    v, i = s.topk(k, dim=1)
    return v, i.masked_fill(v == float("-inf"), -1)


def _inputs(b, n, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g).to(dtype), torch.randn(n, d, generator=g).to(dtype),
            torch.randn(n, generator=g).to(dtype))


def _excl(b, n, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g)[: int(i % 4) * 2].tolist() for i in range(b)]  # ragged


@pytest.mark.parametrize("b,n,d,k,chunk", [(5, 300, 20, 7, 50), (3, 64, 8, 64, 10),
                                           (8, 1000, 16, 20, 333), (1, 17, 4, 1, 5)])
@pytest.mark.parametrize("with_excl", [False, True])
def test_reference_matches_full_topk(b, n, d, k, chunk, with_excl):
    h, w, bias = _inputs(b, n, d)
    excl = _excl(b, n) if with_excl else None
    ev, ei = _oracle(h, w, k, bias, excl)
    v, i = topk_scores(h, w, k, bias, excl, chunk_size=chunk, backend="reference")
    assert v.shape == (b, k) and i.shape == (b, k) and i.dtype == torch.long
    assert torch.equal(i, ei)
    torch.testing.assert_close(v, ev, rtol=1e-5, atol=1e-5 * float(ev[ev.isfinite()].abs().max()))


def test_fewer_eligible_than_k_and_empty_batch():
    h, w, bias = _inputs(2, 10, 4)
    excl = [list(range(8)), []]
    v, i = topk_scores(h, w, 5, bias, excl, chunk_size=3)
    assert i[0, 2:].tolist() == [-1, -1, -1] and torch.isinf(v[0, 2:]).all()
    assert set(i[0, :2].tolist()) == {8, 9} and (i[1] >= 0).all()
    v, i = topk_scores(torch.zeros(0, 4), w, 3)
    assert v.shape == (0, 3) and i.shape == (0, 3)


def test_padded_exclusions_and_errors():
    h, w, bias = _inputs(3, 50, 8)
    lists = [[1, 2], [], [7]]
    padded = pad_exclusions(lists)
    assert padded.tolist() == [[1, 2], [-1, -1], [7, -1]]
    a = topk_scores(h, w, 4, bias, padded)
    b = topk_scores(h, w, 4, bias, lists)
    assert torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="k must be"):
        topk_scores(h, w, 51)
    with pytest.raises(ValueError, match="exclude must be"):
        topk_scores(h, w, 3, exclude=torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="exclude holds"):
        topk_scores(h, w, 3, exclude=[[50], [], []])


def test_bf16_inputs():
    h, w, bias = _inputs(4, 200, 16, torch.bfloat16)
    ev, ei = _oracle(h, w, 10, bias, None)
    v, i = topk_scores(h, w, 10, bias, chunk_size=64)
    assert v.dtype == torch.float32
    torch.testing.assert_close(v, ev, rtol=1e-2, atol=1e-2)
    assert (i == ei).float().mean() > 0.9  # near-ties may swap under a different summation order


@needs_triton
@pytest.mark.parametrize("b,n,d,k", [(5, 100, 20, 7), (17, 40, 8, 9), (2, 9, 3, 9)])
@pytest.mark.parametrize("with_excl", [False, True])
def test_triton_matches_full_topk(b, n, d, k, with_excl):
    h, w, bias = _inputs(b, n, d)
    excl = _excl(b, n) if with_excl else None
    ev, ei = _oracle(h, w, k, bias, excl)
    v, i = topk_scores(h, w, k, bias, excl, backend="triton")
    assert torch.equal(i, ei)
    torch.testing.assert_close(v, ev, rtol=1e-5, atol=1e-5 * float(ev[ev.isfinite()].abs().max()))


@needs_triton
def test_triton_limits_and_empty():
    h, w, bias = _inputs(2, 300, 4)
    with pytest.raises(KernelUnavailableError, match="exceeds"):
        topk_scores(h, w, 20, exclude=[list(range(250)), []], backend="triton")
    v, i = topk_scores(torch.zeros(0, 4), w, 3, backend="triton")
    assert v.shape == (0, 3)
    # fewer eligible items than k: -inf / -1 slots, as the reference
    w, bias = w[:12], bias[:12]
    excl = [list(range(2, 10)), []]
    v, i = topk_scores(h, w, 8, bias, excl, backend="triton")
    ev, ei = _oracle(h, w, 8, bias, excl)
    assert torch.equal(i, ei) and i[0, 4:].tolist() == [-1] * 4


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_item_mask_never_returns_masked_items(backend, with_bias):
    """``item_mask`` (N,) False = never returned (serving's category filters): the oracle sets
    those columns to -inf; rows with fewer than k allowed items end in -inf / -1."""
    b, n, d, k = 4, 30, 6, 12
    h, w, bias = _inputs(b, n, d)
    bias = bias if with_bias else None
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.arange(1, n, 2)] = True  # 15 allowed
    excl = [[1, 3, 5, 7], [], [2, 4], [9]]  # row 0: 11 allowed and not excluded < k
    s = h @ w.t() + (bias if bias is not None else 0.0)
    s[:, ~mask] = float("-inf")
    for i, row in enumerate(excl):
        s[i, row] = float("-inf")
    ev, ei = s.topk(k, dim=1)
    ei = ei.masked_fill(ev == float("-inf"), -1)
    v, i = topk_scores(h, w, k, bias, excl, backend=backend, item_mask=mask)
    assert torch.equal(i, ei)
    assert i[0, 11:].tolist() == [-1] and torch.isinf(v[0, 11:]).all()
    assert mask[i[i >= 0]].all()
    fin = ei >= 0
    torch.testing.assert_close(v[fin], ev[fin], rtol=1e-5, atol=1e-5 * float(ev[fin].abs().max()))
    with pytest.raises(ValueError, match="item_mask must be"):
        topk_scores(h, w, k, bias, item_mask=mask[:-1])
    with pytest.raises(ValueError, match="item_mask must be"):
        topk_scores(h, w, k, bias, item_mask=mask.float())

"""Column-parallel output layer (seed 000, section 5) against a single-process reference.

Two gloo processes on 127.0.0.1 share an uneven split of P = 37 products (19 + 18 columns);
loss, input gradient, hidden-layer gradients and each weight shard's gradient must equal
the single-process model's to 1e-6 (float64, so in practice ~1e-15).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rayrec.models.daily_nn import CostWeights, SparseBatch, combined_cost
from torch import nn

from rayrec.platform.training.tensor_parallel import (
    ColumnParallelOutput,
    parallel_topk,
    parallel_weighted_bce,
    shard_parameter_bytes,
    shard_range,
)
from tests.fixtures import free_port

B, D, H1, H2, P, K = 5, 11, 7, 6, 37, 4
W1_, W0_ = 3.0, 0.25


def _problem() -> dict:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    W = torch.randn(H2, P, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(P, generator=g, dtype=torch.float64) * 0.1
    targets = [[0, 18, 19, 36], [5], [], [20, 21, 22], [1, 30]]  # spans both shards
    exclude = [[3, 19], [], [0, 1, 2, 36], [18], list(range(19, 37))]
    return {"x": x, "W": W, "b": b, "targets": targets, "exclude": exclude}


def _hidden() -> nn.Module:
    torch.manual_seed(123)  # identical replicated hidden layers on every rank
    return nn.Sequential(nn.Linear(D, H1), nn.ReLU(), nn.Linear(H1, H2), nn.Tanh()).double()




def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        prob = _problem()
        hidden = _hidden()
        out = ColumnParallelOutput(H2, P, rank, world_size, dtype=torch.float64)
        out.load_full_(prob["W"], prob["b"])
        x = prob["x"].clone().requires_grad_(True)
        logits = out(hidden(x))  # (B, P_local)
        loss = parallel_weighted_bce(logits, out.local_targets(prob["targets"]), W1_, W0_)
        loss.backward()
        vals, ids = parallel_topk(logits, K, prob["exclude"])  # start derived by all-gather
        vals2, ids2 = out.topk(logits, K, SparseBatch.from_lists(prob["exclude"]))
        torch.save(
            {
                "loss": loss.detach(),
                "x_grad": x.grad,
                "hidden_grads": [p.grad for p in hidden.parameters()],
                "w_grad": out.weight.grad,
                "b_grad": out.bias.grad,
                "range": (out.start, out.stop),
                "topk": (vals, ids, vals2, ids2),
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _reference() -> dict:
    prob = _problem()
    hidden = _hidden()
    x = prob["x"].clone().requires_grad_(True)
    W = prob["W"].clone().requires_grad_(True)
    b = prob["b"].clone().requires_grad_(True)
    logits = hidden(x) @ W + b  # (B, P)
    Y = torch.zeros(B, P, dtype=torch.float64)
    for r, items in enumerate(prob["targets"]):
        Y[r, items] = 1.0
    per = -(
        W1_ * Y * torch.log(torch.sigmoid(logits))
        + W0_ * (1 - Y) * torch.log1p(-torch.sigmoid(logits))
    )
    loss = per.sum(dim=1).mean()
    # eq. 3 is the predictor variant of the daily model's combined cost
    w = CostWeights(wa1=0.0, wa0=0.0, wp1=W1_, wp0=W0_, ti=1e6, to=1e-6)
    empty = SparseBatch.from_lists([[] for _ in range(B)], [[] for _ in range(B)])
    same = combined_cost(logits, empty, SparseBatch.from_lists(prob["targets"]), w).mean()
    torch.testing.assert_close(loss, same)
    loss.backward()
    masked = logits.detach().clone()
    for r, items in enumerate(prob["exclude"]):
        masked[r, items] = float("-inf")
    vals, ids = torch.topk(masked, K, dim=1)
    return {
        "loss": loss.detach(),
        "x_grad": x.grad,
        "hidden_grads": [p.grad for p in hidden.parameters()],
        "W_grad": W.grad,
        "b_grad": b.grad,
        "topk": (vals, ids),
    }


def test_two_rank_gloo_matches_single_process(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    ref = _reference()
    tol = {"rtol": 0.0, "atol": 1e-6}
    covered = []
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        start, stop = got["range"]
        assert (start, stop) == shard_range(P, rank, world)
        assert got["w_grad"].shape == (H2, stop - start)
        covered.append((start, stop))
        torch.testing.assert_close(got["loss"], ref["loss"], **tol)
        torch.testing.assert_close(got["x_grad"], ref["x_grad"], **tol)
        assert len(got["hidden_grads"]) == 4
        for g, r in zip(got["hidden_grads"], ref["hidden_grads"]):
            torch.testing.assert_close(g, r, **tol)
        torch.testing.assert_close(got["w_grad"], ref["W_grad"][:, start:stop], **tol)
        torch.testing.assert_close(got["b_grad"], ref["b_grad"][start:stop], **tol)
        vals, ids, vals2, ids2 = got["topk"]
        torch.testing.assert_close(vals, ref["topk"][0], **tol)
        assert torch.equal(ids, ref["topk"][1])
        assert torch.equal(ids2, ids) and torch.equal(vals2, vals)
    assert covered == [(0, 19), (19, 37)]  # uneven split, whole catalog covered once
    # the gradient is not trivially zero
    assert float(ref["x_grad"].abs().sum()) > 1e-3


def test_single_rank_without_process_group_matches_linear() -> None:
    prob = _problem()
    out = ColumnParallelOutput(H2, P, 0, 1, dtype=torch.float64)
    out.load_full_(prob["W"], prob["b"])
    h = torch.randn(B, H2, dtype=torch.float64)
    torch.testing.assert_close(out(h), h @ prob["W"] + prob["b"])
    vals, ids = parallel_topk(out(h), P + 3, exclude=prob["exclude"], start=0)
    assert ids.shape == (B, P + 3)
    # row 4 excludes 18 products: 19 real ids, then (-inf, -1) padding
    assert int((ids[4] >= 0).sum()) == P - 18 and bool((ids[4, 19:] == -1).all())
    assert not set(ids[0].tolist()) & {3, 19}


def test_world_size_two_needs_a_process_group() -> None:
    out = ColumnParallelOutput(4, 9, 1, 2)
    assert (out.start, out.stop, out.local_size) == (5, 9, 4)
    with pytest.raises(RuntimeError, match="process group"):
        out(torch.randn(2, 4))
    with pytest.raises(ValueError, match="rank"):
        ColumnParallelOutput(4, 9, 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        shard_range(9, 0, 0)


def test_shard_of_a_million_products_holds_half_the_columns() -> None:
    H, P_big = 64, 1_000_000
    full_bytes = (H * P_big + P_big) * 4  # a single-process float32 output layer
    for rank in range(2):
        shard = ColumnParallelOutput(H, P_big, rank, 2, seed=0)
        assert shard.weight.shape == (H, 500_000)
        assert shard_parameter_bytes(shard) == full_bytes // 2
        del shard
    odd = ColumnParallelOutput(H, P_big + 1, 0, 2)
    assert odd.local_size == 500_001

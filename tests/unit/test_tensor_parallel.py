"""Tensor parallelism (seed 000, section 5) against a single-process reference.

Two gloo processes on 127.0.0.1 share an uneven split of P = 37 products (19 + 18 columns):

* the column-parallel output layer: loss, input gradient, hidden-layer gradients and each
  weight shard's gradient must equal the single-process model's to 1e-6 (float64, so in
  practice ~1e-15);
* the daily network sharded by ``shard_daily_nn``: a few Adam steps (dropout, input noise,
  L2, KL) give world 1's losses, and the gathered ``full_state`` equals world 1's state
  dict (float64, 1e-9); ``load_full_state`` then ``full_state`` round-trips exactly.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from rayrec.models.daily_nn import CostWeights, DailyNN, DailyNNConfig, SparseBatch, combined_cost
from rayrec.platform.training.tensor_parallel import (
    ColumnParallelOutput,
    full_state,
    gather_cat,
    load_full_state,
    parallel_topk,
    parallel_weighted_bce,
    shard_daily_nn,
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


# ---------------------------------------------------------------------------------------
# the daily network sharded by product range (shard_daily_nn, full_state, load_full_state)
# ---------------------------------------------------------------------------------------

STEPS, SEED = 4, 5
DAILY_CASES = {
    "predictor_parametric": DailyNNConfig(variant="predictor", decay="parametric", ti=40.0, hidden_sizes=(6, 5),
                                          dropout=0.2, input_noise=0.3, w0=0.5),
    "soft_split_learned": DailyNNConfig(variant="soft_split", decay="learned", hidden_sizes=(6, 5), dropout=0.2,
                                        input_noise=0.3, l2=1e-3, sparsity_weight=0.05, activation="sigmoid"),
    "ew_none": DailyNNConfig(variant="ew", decay="none", hidden_sizes=(6, 5), dropout=0.0, l2=1e-2),
}


def _daily_batches() -> list[tuple[SparseBatch, SparseBatch]]:
    """STEPS (inputs, targets) batches over P products, purchases on both shards."""
    g = torch.Generator().manual_seed(11)
    out = []
    for _ in range(STEPS):
        xs = [torch.randperm(P, generator=g)[: 1 + b % 5].tolist() for b in range(B)]
        ds = [(torch.rand(len(x), generator=g) * 500).tolist() for x in xs]
        ys = [torch.randperm(P, generator=g)[: 1 + b % 3].tolist() for b in range(B)]
        x = SparseBatch.from_lists(xs, ds)
        out.append((SparseBatch(x.item_idx, x.offsets, x.days_ago.double()), SparseBatch.from_lists(ys)))
    return out


def _train_daily(model: DailyNN) -> dict:
    """Adam steps under the same torch RNG state on every rank; losses, scores, full state."""
    model = model.double().train()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    batches = _daily_batches()
    for step, (inputs, targets) in enumerate(batches):
        torch.manual_seed(100 + step)  # identical dropout / input-noise masks on every rank
        loss = model.loss(model(inputs), targets, inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    model.eval()
    with torch.no_grad():
        scores = model.score(model(batches[0][0]))  # (B, P), gathered
    return {"losses": torch.stack(losses), "scores": scores, "state": full_state(model),
            "local_rows": model.input_layer.weight.shape[0]}


def _daily_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=60))
    try:
        got = {name: _train_daily(shard_daily_nn(cfg, P, rank, world_size, seed=SEED))
               for name, cfg in DAILY_CASES.items()}
        # round trip: another model's unsharded state into this rank's shard and back
        cfg = DAILY_CASES["soft_split_learned"]
        other = {k: v.double() for k, v in DailyNN(P, cfg, seed=99).state_dict().items()}
        shard = shard_daily_nn(cfg, P, rank, world_size, seed=SEED).double()
        load_full_state(shard, other)
        got["roundtrip"] = {"state": full_state(shard), "local": dict(shard.state_dict()),
                            "range": shard.catalog_range, "other": other}
        torch.save(got, Path(out_dir) / f"daily_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_rank_daily_nn_equals_one_rank(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_daily_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    tol = {"rtol": 1e-9, "atol": 1e-9}
    for name, cfg in DAILY_CASES.items():
        ref = _train_daily(shard_daily_nn(cfg, P, 0, 1, seed=SEED))
        keys = set(DailyNN(P, cfg).state_dict())
        assert set(ref["state"]) == keys
        assert not torch.allclose(ref["losses"][0], ref["losses"][-1])  # it trained
        for rank in range(world):
            got = torch.load(tmp_path / f"daily_rank{rank}.pt", weights_only=True)[name]
            start, stop = shard_range(P, rank, world)
            assert got["local_rows"] == stop - start  # each rank held only its products
            torch.testing.assert_close(got["losses"], ref["losses"], **tol)
            torch.testing.assert_close(got["scores"], ref["scores"], **tol)
            assert set(got["state"]) == keys, name
            for k, v in ref["state"].items():
                assert got["state"][k].shape == v.shape, (name, k)
                torch.testing.assert_close(got["state"][k], v, **tol, msg=f"{name} {k}")


def test_two_rank_load_full_state_then_full_state_round_trips(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_daily_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    for rank in range(world):
        rt = torch.load(tmp_path / f"daily_rank{rank}.pt", weights_only=True)["roundtrip"]
        start, stop = rt["range"]
        assert (start, stop) == shard_range(P, rank, world)
        assert rt["state"].keys() == rt["other"].keys()
        for k, v in rt["other"].items():
            assert torch.equal(rt["state"][k], v), k
            dim = DailyNN.catalog_dims.get(k)
            assert torch.equal(rt["local"][k], v if dim is None else v.narrow(dim, start, stop - start)), k


def test_one_rank_shard_is_the_whole_model_and_state_helpers_round_trip() -> None:
    cfg = DAILY_CASES["soft_split_learned"]
    m = shard_daily_nn(cfg, P, 0, 1, seed=SEED)
    ref = DailyNN(P, cfg, seed=SEED)
    assert not m.is_sharded and m.reduce_sum(torch.ones(1)).item() == 1.0
    for k, v in ref.state_dict().items():
        assert torch.equal(full_state(m)[k], v), k
    other = DailyNN(P, cfg, seed=SEED + 1).state_dict()
    load_full_state(m, other)
    assert all(torch.equal(full_state(m)[k], v) for k, v in other.items())
    # a range module is sliced by catalog_dims; nested modules are found by prefix
    part = DailyNN(P, cfg, start=19, stop=P)
    load_full_state(part, other)
    assert torch.equal(part.output_layer.weight, other["output_layer.weight"][19:])
    assert torch.equal(part.input_layer.weight, other["input_layer.weight"][19:])
    assert torch.equal(part.conv_weight, other["conv_weight"])
    wrapper = nn.ModuleDict({"net": DailyNN(P, cfg)})
    load_full_state(wrapper, {f"net.{k}": v for k, v in other.items()})
    assert torch.equal(full_state(wrapper)["net.output_layer.bias"], other["output_layer.bias"])
    # without the other ranks a range module cannot be gathered, and shapes are checked
    with pytest.raises(RuntimeError, match="do not tile"):
        full_state(part)
    bad = dict(other, **{"output_layer.bias": other["output_layer.bias"][:-1]})
    with pytest.raises(ValueError, match="output_layer.bias"):
        load_full_state(part, bad)
    with pytest.raises(RuntimeError, match="process group"):
        shard_daily_nn(cfg, P, 1, 2)
    x = torch.randn(3, 4, requires_grad=True)
    y = gather_cat(x, 1)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 4))

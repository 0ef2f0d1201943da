"""Tensor parallelism (seed 000, section 5) against a single-process reference.

Two gloo processes on 127.0.0.1 share an uneven split of P = 37 products (19 + 18 columns):

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

from rayrec.models.daily_nn import DailyNN, DailyNNConfig, SparseBatch
from rayrec.platform.training.tensor_parallel import (
    full_state,
    gather_cat,
    load_full_state,
    shard_daily_nn,
    shard_parameter_bytes,
    shard_range,
)
from tests.fixtures import free_port

B, P = 5, 37  # batch rows; products, split 19 + 18 over 2 ranks (uneven on purpose)


def test_shard_ranges_cover_the_catalog_once() -> None:
    assert [shard_range(P, r, 2) for r in range(2)] == [(0, 19), (19, 37)]
    assert [shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError, match="world_size"):
        shard_range(9, 0, 0)


def test_shard_of_a_million_products_holds_half_the_catalog_tables() -> None:
    """Seed 000 section 5: a catalog of a million products. A rank's DailyNN slice holds
    half of the input rows and output columns; the small hidden layer is replicated."""
    P_big, cfg = 1_000_000, DailyNNConfig(hidden_sizes=(64, 32), decay="parametric", ti=40.0)
    h1, h2 = cfg.hidden_sizes
    replicated = (h1 + h2 * h1 + h2) * 4  # input bias, hidden weight and bias (float32)
    catalog = (P_big * h1 + P_big * h2 + P_big) * 4  # input rows, output columns and bias
    for start, stop in (shard_range(P_big, r, 2) for r in range(2)):
        shard = DailyNN(P_big, cfg, seed=0, start=start, stop=stop)
        assert shard.input_layer.weight.shape == (500_000, h1)
        assert shard.output_layer.weight.shape == (500_000, h2)
        assert shard_parameter_bytes(shard) == catalog // 2 + replicated
        del shard
    assert shard_range(P_big + 1, 0, 2) == (0, 500_001)


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

"""Row-sparse item tables (catalog-scale training): the gather op, the indexed optimisers
(module docstring of ``rayrec.platform.training.optim``, eqs. A-C), and the data-parallel
row exchange against one process."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayrec.ops_kernels import gather_rows, gather_rows_multi, sparse_grad_rows
from rayrec.platform.training.optim import (
    AdagradMomentum,
    LazyAdam,
    LazySGD,
    OptimConfig,
    build_optimizer,
)
from rayrec.platform.training.sparse_rows import sync_item_grads


def _tables(seed: int = 0, n: int = 50, h: int = 6) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return (torch.nn.Parameter(torch.randn(n, h, generator=g, dtype=torch.float64)),
            torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64)))


def _loss(w, b, idx, sparse: bool, target: torch.Tensor) -> torch.Tensor:
    rows = gather_rows(w, idx, sparse, "W") if sparse else w[idx]
    bias = gather_rows(b, idx, sparse, "b") if sparse else b[idx]
    return ((rows @ target + bias) ** 2).mean()


# ---- the op --------------------------------------------------------------------------------

def test_gather_rows_gradient_is_row_sparse_and_equals_dense():
    w, b = _tables()
    idx = torch.tensor([3, 7, 3, 40])  # a repeated row: its gradients must add up
    t = torch.randn(6, dtype=torch.float64)
    _loss(w, b, idx, True, t).backward()
    gs_w, gs_b = w.grad, b.grad
    assert gs_w.is_sparse and gs_b.is_sparse
    assert sorted(gs_w.coalesce().indices()[0].tolist()) == [3, 7, 40]
    w2, b2 = _tables()
    _loss(w2, b2, idx, False, t).backward()
    torch.testing.assert_close(gs_w.to_dense(), w2.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(gs_b.to_dense(), b2.grad, rtol=0, atol=1e-12)


def test_one_lookup_of_several_index_lists_gives_unique_sorted_rows_equal_to_dense():
    """GRU4Rec reads ``Wy`` for its inputs and its output columns in one call: the gradient
    holds each touched row once, sorted (no coalesce left for the optimiser), and equals the
    dense gradient of two separate lookups."""
    w, _ = _tables()
    x, cols = torch.tensor([9, 2, 9]), torch.tensor([40, 2, 3, 3, 0])
    t = torch.randn(6, dtype=torch.float64)
    a, c = gather_rows_multi(w, [x, cols], True, "Wy")
    ((a @ t).sum() + (c @ t).pow(2).sum()).backward()
    rows, vals = sparse_grad_rows(w.grad)
    assert rows.tolist() == [0, 2, 3, 9, 40]
    w2, _ = _tables()
    ((w2[x] @ t).sum() + (w2[cols] @ t).pow(2).sum()).backward()
    torch.testing.assert_close(vals, w2.grad[rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(w.grad.to_dense(), w2.grad, rtol=0, atol=1e-12)


def test_sparse_grad_rows_sums_duplicates_and_sorts_unsorted_rows():
    idx = torch.tensor([[5, 1, 5, 3]])
    vals = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0], [0.5, 0.5]])
    rows, v = sparse_grad_rows(torch.sparse_coo_tensor(idx, vals, (8, 2)))
    assert rows.tolist() == [1, 3, 5]
    assert v.tolist() == [[3.0, 4.0], [0.5, 0.5], [11.0, 22.0]]
    rows, v = sparse_grad_rows(torch.sparse_coo_tensor(torch.tensor([[1, 4, 6]]), vals[:3], (8, 2)))
    assert rows.tolist() == [1, 4, 6] and v.tolist() == vals[:3].tolist()  # already unique and sorted


def test_gather_rows_names_a_bad_item_index_before_any_step():
    w, _ = _tables(n=10)
    with pytest.raises(IndexError, match=r"item index 10 at position 2 is outside Wy \(10 rows"):
        gather_rows(w, torch.tensor([0, 9, 10, 1]), True, "Wy")
    with pytest.raises(IndexError, match="item index -1 at position 0"):
        gather_rows(w, torch.tensor([-1]), False, "Wy")


# ---- the optimisers --------------------------------------------------------------------------

def _run(opt_cls, kw, sparse: bool, batches, seed: int = 0):
    w, b = _tables(seed)
    opt = opt_cls([w, b], **kw)
    t = torch.linspace(-1, 1, 6, dtype=torch.float64)
    for idx in batches:
        opt.zero_grad(set_to_none=True)
        _loss(w, b, idx, sparse, t).backward()
        opt.step()
    return w.detach(), b.detach()


OPTIMISERS = [
    (AdagradMomentum, {"lr": 0.1, "momentum": 0.3, "eps": 1e-6}),
    (AdagradMomentum, {"lr": 0.1, "momentum": 0.0, "eps": 1e-6, "weight_decay": 0.01}),
    (LazyAdam, {"lr": 0.01}),
    (LazySGD, {"lr": 0.05, "momentum": 0.5}),
]


@pytest.mark.parametrize("opt_cls,kw", OPTIMISERS, ids=["adagrad_m", "adagrad_wd", "adam", "sgd_m"])
def test_indexed_update_equals_dense_when_every_row_is_touched(opt_cls, kw):
    every = [torch.randperm(50, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    ws, bs = _run(opt_cls, kw, True, every)
    wd, bd = _run(opt_cls, kw, False, every)
    torch.testing.assert_close(ws, wd, rtol=0, atol=1e-12)
    torch.testing.assert_close(bs, bd, rtol=0, atol=1e-12)


@pytest.mark.parametrize("opt_cls,kw", OPTIMISERS, ids=["adagrad_m", "adagrad_wd", "adam", "sgd_m"])
def test_rows_without_gradient_never_change(opt_cls, kw):
    w0, b0 = _tables()
    batches = [torch.tensor([1, 2, 3]), torch.tensor([2, 5]), torch.tensor([30, 31])]
    ws, bs = _run(opt_cls, kw, True, batches)
    touched = {1, 2, 3, 5, 30, 31}
    rest = torch.tensor(sorted(set(range(50)) - touched))
    assert torch.equal(ws[rest], w0.detach()[rest]) and torch.equal(bs[rest], b0.detach()[rest])
    assert not torch.equal(ws[1], w0.detach()[1])
    # rows 1-3 got no gradient in steps 2-3 (only 2 did in step 2): the indexed update leaves
    # them still, while the dense update keeps moving them by their decaying momentum
    wd, _ = _run(opt_cls, kw, False, batches)
    if kw.get("momentum", 0) > 0 or opt_cls is LazyAdam:
        assert not torch.allclose(ws[1], wd[1], rtol=0, atol=1e-9)


def test_adagrad_momentum_matches_the_equation_by_hand():
    """Eq. A on one row over two steps, computed by hand."""
    w = torch.nn.Parameter(torch.zeros(4, 1, dtype=torch.float64))
    opt = AdagradMomentum([w], lr=0.5, momentum=0.5, eps=0.0 + 1e-12)
    grads = [3.0, 4.0]
    for g in grads:
        opt.zero_grad()
        w.grad = torch.sparse_coo_tensor(torch.tensor([[2]]), torch.tensor([[g]], dtype=torch.float64), (4, 1),
                                         check_invariants=True)
        opt.step()
    acc1, acc2 = 9.0, 25.0
    v1 = -0.5 * 3.0 / np.sqrt(acc1 + 1e-12)
    v2 = 0.5 * v1 - 0.5 * 4.0 / np.sqrt(acc2 + 1e-12)
    assert w[2, 0].item() == pytest.approx(v1 + v2, abs=1e-12)
    assert w[[0, 1, 3]].abs().sum().item() == 0.0


def test_lazy_adam_dense_path_equals_torch_adam():
    every = [torch.randperm(50, generator=torch.Generator().manual_seed(s)) for s in range(5)]
    ws, _ = _run(LazyAdam, {"lr": 0.01, "weight_decay": 0.001}, False, every)
    wt, _ = _run(torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.001}, False, every)
    torch.testing.assert_close(ws, wt, rtol=0, atol=1e-12)


def test_optimiser_state_round_trips_and_build_picks_the_lazy_forms():
    w, b = _tables()
    for name in ("adagrad_momentum", "adam", "sgd"):
        opt = build_optimizer([w, b], OptimConfig(name=name, lr=0.01, momentum=0.1))
        opt.zero_grad()
        _loss(w, b, torch.tensor([1, 4]), True, torch.ones(6, dtype=torch.float64)).backward()
        opt.step()
        again = build_optimizer([w, b], OptimConfig(name=name, lr=0.01, momentum=0.1))
        again.load_state_dict(opt.state_dict())
        assert again.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


# ---- the data-parallel row exchange: 2 gloo ranks vs 1 process ------------------------------

STEPS = 5


def _batches(rank: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    # each rank touches its own rows (some shared across ranks), of varying count per step
    return [torch.randint(0, 50, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g)
            for _ in range(STEPS)]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    w, b = _tables()
    opt = AdagradMomentum([w, b], lr=0.1, momentum=0.3)
    t = torch.linspace(-1, 1, 6, dtype=torch.float64)
    for idx in _batches(rank):
        opt.zero_grad(set_to_none=True)
        _loss(w, b, idx, True, t).backward()
        sync_item_grads([w, b], world)
        opt.step()
    torch.save({"w": w.detach(), "b": b.detach()}, f"{out}/rank{rank}.pt")
    dist.barrier()  # a rank tearing gloo down while the other still talks aborts (SIGABRT)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_with_gathered_rows_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(r0["w"], r1["w"]) and torch.equal(r0["b"], r1["b"])  # ranks identical
    # one process: the mean of the two ranks' losses (DDP's gradient average), one update
    w, b = _tables()
    opt = AdagradMomentum([w, b], lr=0.1, momentum=0.3)
    t = torch.linspace(-1, 1, 6, dtype=torch.float64)
    for i0, i1 in zip(_batches(0), _batches(1)):
        opt.zero_grad(set_to_none=True)
        ((_loss(w, b, i0, True, t) + _loss(w, b, i1, True, t)) / 2).backward()
        opt.step()
    torch.testing.assert_close(r0["w"], w.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(r0["b"], b.detach(), rtol=0, atol=1e-12)
    untouched = sorted(set(range(50)) - {int(i) for r in (0, 1) for x in _batches(r) for i in x})
    w0, _ = _tables()
    assert untouched and torch.equal(r0["w"][untouched], w0.detach()[untouched])


# ---- the daily model's input table (seed 000: a customer's purchases touch few products) ------

@pytest.mark.parametrize("decay", ["none", "parametric"])
def test_daily_input_table_gradient_is_row_sparse_and_equal(decay):
    from rayrec.models.daily_nn import DailyNN, DailyNNConfig, SparseBatch

    cfg = DailyNNConfig(hidden_sizes=(8, 4), decay=decay, dropout=0.0)
    x = SparseBatch.from_lists([[1, 5, 5, 30], [2], [30, 7]], [[1.0, 3.0, 9.0, 2.0], [0.5], [4.0, 40.0]])
    y = SparseBatch.from_lists([[3], [5, 6], [1]])
    grads = []
    for sparse in (True, False):
        m = DailyNN(40, cfg, seed=3)
        m.sparse_rows = sparse
        loss = m.loss(m(x), y, x)
        loss.backward()
        grads.append((float(loss.detach()), m.input_layer.weight.grad))
    (l_s, g_s), (l_d, g_d) = grads
    assert g_s.is_sparse and not g_d.is_sparse
    assert l_s == pytest.approx(l_d, abs=1e-6)
    assert sorted(set(g_s.coalesce().indices()[0].tolist())) == [1, 2, 5, 7, 30]
    torch.testing.assert_close(g_s.to_dense(), g_d, rtol=1e-5, atol=1e-7)


def test_daily_learned_decay_and_l2_keep_the_input_table_dense():
    from rayrec.models.daily_nn import DailyNN, DailyNNConfig

    assert not DailyNN(10, DailyNNConfig(hidden_sizes=(4, 4), decay="learned")).sparse_input_possible
    assert not DailyNN(10, DailyNNConfig(hidden_sizes=(4, 4), l2=1e-4)).sparse_input_possible
    assert DailyNN(10, DailyNNConfig(hidden_sizes=(4, 4))).sparse_input_possible

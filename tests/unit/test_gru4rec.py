"""GRU4Rec model, optimiser and training step (fast; tiny generated fixtures)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from rayrec.models.gru4rec import GRU4Rec, GRU4RecConfig, GRU4RecScorer, build
from rayrec.models.losses import LossConfig

from rayrec.platform.checkpoint import load_checkpoint, save_checkpoint
from rayrec.platform.training.optim import AdagradMomentum, OptimConfig, build_optimizer
from rayrec.platform.training.session_parallel import SessionArrays
from rayrec.platform.training.steps import evaluate, make_sampler, train_epoch

N = 30


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-wait stalls on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- config
def test_config_defaults_and_validation() -> None:
    cfg = GRU4RecConfig()
    assert cfg.layers == (100,) and cfg.constrained_embedding and cfg.embedding == 0
    assert cfg.dropout_p_hidden == 0.4 and cfg.final_act == "linear"
    with pytest.raises(ValueError, match="layers"):
        GRU4RecConfig(layers=(100, -1))
    with pytest.raises(ValueError, match="layers"):
        GRU4RecConfig(layers=())
    with pytest.raises(ValueError, match="embedding"):
        GRU4RecConfig(embedding=-3, constrained_embedding=False)
    with pytest.raises(ValueError, match="dropout_p_hidden"):
        GRU4RecConfig(dropout_p_hidden=1.0)
    with pytest.raises(ValueError, match="dropout_p_embed"):
        GRU4RecConfig(dropout_p_embed=-0.1)
    with pytest.raises(ValueError, match="constrained_embedding"):
        GRU4RecConfig(embedding=16)  # constrained by default
    with pytest.raises(ValueError, match="extra"):
        GRU4RecConfig(hidden=3)
    with pytest.raises(ValueError):
        GRU4RecConfig(final_act="softmax")
    cfg2 = GRU4RecConfig.model_validate(cfg.model_dump(mode="json"))
    assert cfg2 == cfg


# ---------------------------------------------------------------- model
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"constrained_embedding": False},  # one-hot input
        {"constrained_embedding": False, "embedding": 8},
        {"layers": (12, 6)},
    ],
)
def test_shapes_and_score(kw: dict) -> None:
    torch.manual_seed(0)
    m = GRU4Rec(GRU4RecConfig(layers=kw.pop("layers", (10,)), **kw), N)
    h = m.init_hidden(4)
    assert [t.shape for t in h] == [(4, s) for s in m.layers]
    out, h2 = m(torch.tensor([0, 5, 29, 5]), h)
    assert out.shape == (4, m.layers[-1]) and [t.shape for t in h2] == [t.shape for t in h]
    full = m.score(out)
    assert full.shape == (4, N)
    idx = torch.tensor([5, 0, 7])
    torch.testing.assert_close(m.score(out, idx), full[:, idx])


def test_init_bounds_per_block() -> None:
    m = GRU4Rec(GRU4RecConfig(layers=(40,), constrained_embedding=False), 500)
    h = 40
    bound_x = math.sqrt(6 / (500 + h))  # one-hot input block: fan_in = N, fan_out = H
    bound_h = math.sqrt(6 / (h + h))
    wx = m.Wx[0]
    for k in range(3):
        blk = wx[:, k * h : (k + 1) * h]
        assert blk.abs().max() <= bound_x and blk.abs().max() > 0.9 * bound_x
    assert m.Wrz[0].abs().max() <= bound_h and m.Wrz[0].abs().max() > 0.9 * bound_h
    assert m.Wh[0].abs().max() <= bound_h
    assert m.Wy.abs().max() <= math.sqrt(6 / (500 + h))
    assert torch.count_nonzero(m.b[0]) == 0 and torch.count_nonzero(m.By) == 0


def test_gru_equations_and_dropout_placement() -> None:
    """One step equals the hand-written GRU of seed 003 section 2.2 (reset before U)."""
    torch.manual_seed(1)
    m = GRU4Rec(GRU4RecConfig(layers=(5,), dropout_p_hidden=0.0), N).double()
    with torch.no_grad():
        m.b[0].uniform_(-0.5, 0.5)
    items = torch.tensor([3, 4])
    h0 = [torch.randn(2, 5, dtype=torch.float64)]
    out, _ = m(items, h0)
    x = m.Wy[items]  # constrained: input embedding = output weights
    wx, wrz, wh, b = m.Wx[0], m.Wrz[0], m.Wh[0], m.b[0]
    r = torch.sigmoid(x @ wx[:, :5] + b[:5] + h0[0] @ wrz[:, :5])
    z = torch.sigmoid(x @ wx[:, 5:10] + b[5:10] + h0[0] @ wrz[:, 5:])
    c = torch.tanh(x @ wx[:, 10:] + b[10:] + (r * h0[0]) @ wh)
    torch.testing.assert_close(out, (1 - z) * h0[0] + z * c)

    # dropout: active in train mode only, and the carried hidden state is the dropped one
    md = GRU4Rec(GRU4RecConfig(layers=(50,), dropout_p_hidden=0.5), N)
    md.train()
    out_t, hid_t = md(torch.arange(8), md.init_hidden(8))
    assert (out_t == 0).float().mean() > 0.3
    assert torch.equal(out_t, hid_t[0])
    md.eval()
    out_e, _ = md(torch.arange(8), md.init_hidden(8))
    assert (out_e == 0).float().mean() < 0.05


def test_final_activations() -> None:
    out = torch.randn(3, 10)
    for act in ["linear", "tanh", "relu", "elu", "leaky"]:
        m = GRU4Rec(GRU4RecConfig(layers=(10,), final_act=act), N)
        s = m.score(out)
        raw = out @ m.Wy.t()
        ref = {
            "linear": raw,
            "tanh": torch.tanh(raw),
            "relu": torch.relu(raw),
            "elu": torch.nn.functional.elu(raw),
            "leaky": torch.nn.functional.leaky_relu(raw, 0.01),
        }[act]
        torch.testing.assert_close(s, ref)


def test_scorer_reset_and_select() -> None:
    torch.manual_seed(2)
    m = GRU4Rec(GRU4RecConfig(layers=(8,)), N)
    sc = GRU4RecScorer(m)
    assert sc.n_items == N and not m.training
    st = sc.init_state(2)
    s1, st = sc.step(st, torch.tensor([1, 2]), torch.tensor([True, True]))
    s2, st2 = sc.step(st, torch.tensor([3, 3]), torch.tensor([False, True]))
    # row 1 was reset: same as feeding item 3 to a fresh state
    fresh, _ = sc.step(sc.init_state(1), torch.tensor([3]), torch.tensor([True]))
    torch.testing.assert_close(s2[1:], fresh)
    assert not torch.allclose(s2[0], fresh[0])
    sel = sc.select(st2, torch.tensor([1]))
    assert sel[0].shape == (1, 8)
    torch.testing.assert_close(sel[0], st2[0][1:])


# ---------------------------------------------------------------- optimiser
def test_adagrad_momentum_math_and_state_dict() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = AdagradMomentum([p], lr=0.1, momentum=0.5, eps=1e-6)
    acc = np.zeros(2)
    v = np.zeros(2)
    theta = np.array([1.0, -2.0])
    for g in ([0.5, -1.0], [0.2, 0.3]):
        p.grad = torch.tensor(g)
        opt.step()
        g = np.array(g)
        acc += g * g
        v = 0.5 * v - 0.1 * g / np.sqrt(acc + 1e-6)
        theta = theta + v
    np.testing.assert_allclose(p.detach().numpy(), theta, rtol=1e-6)
    sd = copy.deepcopy(opt.state_dict())
    p2 = torch.nn.Parameter(p.detach().clone())
    opt2 = AdagradMomentum([p2], lr=0.1, momentum=0.5)
    opt2.load_state_dict(sd)
    p.grad = torch.tensor([0.1, 0.1])
    p2.grad = torch.tensor([0.1, 0.1])
    opt.step()
    opt2.step()
    torch.testing.assert_close(p, p2)
    assert set(opt.state[p]) == {"acc", "mom"}


def test_build_optimizer_and_config() -> None:
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(build_optimizer(p, OptimConfig()), AdagradMomentum)
    ada = build_optimizer(p, OptimConfig(name="adagrad"))
    assert ada.param_groups[0]["momentum"] == 0.0
    assert isinstance(build_optimizer(p, OptimConfig(name="adam", lr=1e-3)), torch.optim.Adam)
    with pytest.raises(ValueError, match="lr"):
        OptimConfig(lr=0.0)
    with pytest.raises(ValueError, match="momentum"):
        OptimConfig(momentum=1.0)


# ---------------------------------------------------------------- training smoke test
def _fixture(n_sessions: int = 300, seed: int = 0) -> SessionArrays:
    """Sessions that walk a fixed cycle of items: item i is always followed by (i + 1) % N."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 8, size=n_sessions)
    starts = rng.integers(0, N, size=n_sessions)
    items = np.concatenate([(s + np.arange(n)) % N for s, n in zip(starts, lengths)])
    offsets = np.zeros(n_sessions + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return SessionArrays(offsets, items)


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max", "top1-max", "top1", "bpr"])
def test_golden_smoke_loss_falls_and_checkpoint_roundtrip(loss: str, tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    arrays = _fixture()
    mcfg = GRU4RecConfig(layers=(16,), dropout_p_hidden=0.0)
    lcfg = LossConfig(name=loss, n_sample=8, sample_alpha=0.5, bpreg=0.5, sample_store_size=4000)
    gen = torch.Generator().manual_seed(0)
    model = build(mcfg, N)
    opt = build_optimizer(model.parameters(), OptimConfig(lr=0.1, momentum=0.2))
    sampler = make_sampler(arrays, N, lcfg, gen)
    first = train_epoch(model, opt, arrays, lcfg, sampler, 16, gen)
    for _ in range(4):
        last = train_epoch(model, opt, arrays, lcfg, sampler, 16, gen)
    assert first["events"] == sum(np.diff(arrays.offsets) - 1)
    assert last["loss"] < 0.9 * first["loss"], (first, last)
    res = evaluate(model, arrays, (1, 5), batch_size=32)
    assert res["recall@5"] > 0.5  # a deterministic successor is easy to learn

    save_checkpoint(
        tmp_path / "ck",
        model.state_dict(),
        {"model": mcfg.model_dump(mode="json"), "loss": lcfg.model_dump(mode="json")},
        [str(i) for i in range(N)],
        opt.state_dict(),
        {"epoch": 5},
    )
    ck = load_checkpoint(tmp_path / "ck")
    model2 = build(GRU4RecConfig.model_validate(ck.config["model"]), len(ck.item_ids))
    model2.load_state_dict(ck.model_state)
    opt2 = build_optimizer(model2.parameters(), OptimConfig(lr=0.1, momentum=0.2))
    opt2.load_state_dict(ck.optim_state)
    sc1, sc2 = GRU4RecScorer(model), GRU4RecScorer(model2)
    items = torch.tensor([0, 3, 7])
    reset = torch.ones(3, dtype=torch.bool)
    a, _ = sc1.step(sc1.init_state(3), items, reset)
    b, _ = sc2.step(sc2.init_state(3), items, reset)
    assert torch.equal(a, b)
    # the optimiser resumes identically too
    for mdl, o in ((model, opt), (model2, opt2)):
        torch.manual_seed(5)
        train_epoch(mdl, o, arrays, lcfg, None, 16, max_steps=3)
    for (k, v), v2 in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(v, v2), k


def test_registry_entry() -> None:
    from rayrec.models import registry

    entry = registry.get("gru4rec")
    assert entry.config_cls is GRU4RecConfig and entry.kind == "session"
    assert isinstance(entry.build(GRU4RecConfig(layers=(4,)), 7), GRU4Rec)

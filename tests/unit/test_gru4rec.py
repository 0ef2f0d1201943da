"""GRU4Rec model, optimiser and its training through the production loop (fast; tiny
generated fixtures).  Training runs ``rayrec.platform.training.loop.run_local`` (the one loop of
every model, in this process) and evaluation loads the loop's checkpoint with
``rayrec.platform.checkpoint.load_model``."""

from __future__ import annotations

import copy
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rayrec.models.contract import ServableScorer
from rayrec.models.gru4rec import GRU4Rec, GRU4RecConfig, GRU4RecScorer, GRU4RecTask, build
from rayrec.models.losses import LossConfig
from rayrec.models.session_parallel import SessionArrays, item_counts, n_training_pairs
from rayrec.platform.checkpoint import load_checkpoint, load_model, save_checkpoint
from rayrec.platform.evaluation.protocols import evaluate_next_item
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.families import TrainData
from rayrec.platform.training.loop import run_local
from rayrec.platform.training.optim import AdagradMomentum, LazyAdam, OptimConfig, build_optimizer

N = 30
ITEM_IDS = [str(i) for i in range(N)]


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
    assert cfg.name == "gru4rec"
    assert cfg.layers == (100,) and cfg.constrained_embedding and cfg.embedding == 0
    assert cfg.dropout_p_hidden == 0.4 and cfg.final_act == "linear"
    assert cfg.loss == LossConfig()  # the training objective is part of the model's config
    assert GRU4RecConfig(loss={"name": "bpr-max", "n_sample": 16}).loss.n_sample == 16
    with pytest.raises(ValueError, match="extra"):
        GRU4RecConfig(loss={"n_sampel": 16})
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
    assert isinstance(build_optimizer(p, OptimConfig(name="adam", lr=1e-3)), LazyAdam)
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


def _job(tmp_path: Path, loss: str, n_sample: int, epochs: int, **train) -> TrainJobConfig:
    return TrainJobConfig.model_validate({
        "model": {"name": "gru4rec", "layers": [16], "dropout_p_hidden": 0.0,
                  "loss": {"name": loss, "n_sample": n_sample, "sample_alpha": 0.5, "bpreg": 0.5,
                           "sample_store_size": 4000}},
        "optim": {"lr": 0.1, "momentum": 0.2},
        "train": {"epochs": epochs, "batch_size": 16, "seed": 0, **train},
        "eval": {"ks": [1, 5], "batch_size": 32, "every": epochs},
        "run": {"storage_path": str(tmp_path / "runs")},
        "ray": {"use_ray": False},
    })


def _train(job: TrainJobConfig, arrays: SessionArrays, keep: Path, restore_dir: str | None = None,
           log=lambda _m: None):
    """The production loop in this process (validation on ``arrays``); every epoch's checkpoint
    is copied to ``keep/epoch_<k>`` (the loop removes its own after the report)."""
    saved: dict[int, Path] = {}

    def report(metrics, ck_dir):
        if ck_dir is not None:
            saved[metrics["epoch"]] = Path(shutil.copytree(ck_dir, keep / f"epoch_{metrics['epoch']}"))

    data = TrainData(arrays, arrays, ITEM_IDS, item_counts(arrays, N))
    return run_local(job, data, restore_dir=restore_dir, report=report, log=log), saved


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max", "top1-max", "top1", "bpr"])
def test_golden_smoke_loss_falls_and_checkpoint_roundtrip(loss: str, tmp_path) -> None:
    arrays = _fixture()
    job = _job(tmp_path, loss, n_sample=8, epochs=5)
    lines: list[str] = []
    out, cks = _train(job, arrays, tmp_path / "cks", log=lines.append)
    hist = out["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5] and sorted(cks) == [1, 2, 3, 4, 5]
    # every (input, next item) pair is trained on exactly once per epoch
    assert all(h["examples"] == n_training_pairs(arrays) == sum(np.diff(arrays.offsets) - 1) for h in hist)
    first, last = hist[0], hist[-1]
    assert last["loss"] < 0.9 * first["loss"], (first, last)
    assert last["world_size"] == 1 and last["examples_per_s"] > 0 and last["epoch_s"] > 0
    assert re.match(r"epoch 1/5 loss \d+\.\d{4} [\d,]+ examples/s \(\d+\.\ds\)$", lines[0]), lines
    assert re.match(r"epoch 5/5 loss .*  valid recall@5 \d\.\d{4} mrr@5 \d\.\d{4}", lines[-1]), lines

    # the loop's checkpoint: the registered model rebuilt by load_model (weights_only)
    loaded = load_model(cks[5], expected_item_ids=ITEM_IDS, kind="session")
    assert isinstance(loaded.model, GRU4Rec) and loaded.config == job.model
    assert TrainJobConfig.model_validate(loaded.checkpoint.config).model == job.model
    assert loaded.checkpoint.meta["epoch"] == 5 and loaded.checkpoint.meta["model"] == "gru4rec"
    assert set(loaded.checkpoint.optim_state["state"])  # Adagrad-momentum accumulators kept
    res = evaluate_next_item(loaded.scorer(), arrays.offsets, arrays.items, (1, 5), batch_size=32)
    assert res["recall@5"] > 0.5  # a deterministic successor is easy to learn
    # the checkpoint holds exactly what the loop validated at epoch 5
    assert last["protocol"] == res["protocol"] == "next_item" and last["n"] == res["n"]
    for key in ("recall@1", "recall@5", "mrr@5"):
        assert last[key] == pytest.approx(res[key], abs=1e-12), key
    # an untrained model of the same config does far worse: the weights were learned
    fresh = evaluate_next_item(GRU4RecScorer(build(job.model, N)), arrays.offsets, arrays.items, (5,), 32)
    assert fresh["recall@5"] < res["recall@5"] - 0.2


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max", "top1"])
def test_resume_from_checkpoint_equals_uninterrupted_run(loss: str, tmp_path) -> None:
    """Resuming from epoch 2's checkpoint (weights, optimiser state, epoch) ends bit-identical
    to the uninterrupted 4-epoch run.  Mini-batch negatives only (``n_sample=0``, as the old
    test resumed without a sampler), no dropout, no shuffle: the loop then draws nothing at
    random (a resumed run re-seeds its sampler, so with extra samples the two runs would
    differ by the samples drawn after the restore, not by the restored state)."""
    arrays = _fixture()
    job = _job(tmp_path, loss, n_sample=0, epochs=4)
    full, cks = _train(job, arrays, tmp_path / "full")
    resumed, cks_r = _train(job, arrays, tmp_path / "resumed", restore_dir=str(cks[2]))
    assert sorted(cks_r) == [3, 4]  # only epochs 3 and 4 were trained (and reported) again
    # the resumed run's history: epochs 1-2 from the checkpoint, then its own 3-4
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    a, b = load_checkpoint(cks[4]), load_checkpoint(cks_r[4])
    assert a.model_state.keys() == b.model_state.keys()
    for k, v in a.model_state.items():
        assert torch.equal(v, b.model_state[k]), k
    assert resumed["loss"] == full["loss"] and resumed["recall@5"] == full["recall@5"]
    # the optimiser state is what makes it exact: the same weights with fresh Adagrad
    # accumulators (no optimiser state in the checkpoint) train elsewhere
    ck2 = load_checkpoint(cks[2])
    save_checkpoint(tmp_path / "no_optim", ck2.model_state, ck2.config, ck2.item_ids, None, ck2.meta)
    _, cks_f = _train(job, arrays, tmp_path / "fresh_optim", restore_dir=str(tmp_path / "no_optim"))
    c = load_checkpoint(cks_f[4])
    assert any(not torch.equal(v, c.model_state[k]) for k, v in a.model_state.items())


def test_sampled_training_is_reproducible_and_seeded(tmp_path) -> None:
    """Same train.seed: identical weights (init, extra samples, dropout all seeded by the loop);
    another seed: other weights."""
    arrays = _fixture()

    def weights(seed: int, tag: str) -> dict[str, torch.Tensor]:
        job = _job(tmp_path, "bpr-max", n_sample=8, epochs=1, seed=seed, max_steps_per_epoch=10)
        job = job.model_copy(update={"model": job.model.model_copy(update={"dropout_p_hidden": 0.3})})
        _, cks = _train(job, arrays, tmp_path / tag)
        return load_checkpoint(cks[1]).model_state

    w0, w0b, w1 = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(torch.equal(v, w0b[k]) for k, v in w0.items())
    assert not all(torch.equal(v, w1[k]) for k, v in w0.items())


def test_registry_entry() -> None:
    from rayrec.models import registry

    entry = registry.get("gru4rec")
    assert entry.config_cls is GRU4RecConfig and entry.kind == "session"
    assert entry.trainable and entry.task is GRU4RecTask and entry.parallelism == "data"
    assert entry.metrics == "next_item"
    model = entry.build(GRU4RecConfig(layers=(4,)), 7)
    assert isinstance(model, GRU4Rec)
    assert isinstance(entry.scorer(model), ServableScorer)  # evaluation and Serve use it

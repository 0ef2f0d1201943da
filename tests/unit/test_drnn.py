"""DRNN (seed 004): CodeGen structure validation, the history weights, the history column,
``session`` / ``user`` sequences, the training windows, the lr step schedule and a golden
smoke fit through the production loop (fast; tiny generated fixtures, no Ray)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rayrec.models import layers as codegen
from rayrec.models.contract import ServableScorer
from rayrec.models.drnn import (
    DRNNConfig,
    DRNNScorer,
    DRNNTask,
    build,
    history_weights,
    training_windows,
)
from rayrec.models.session_parallel import (
    SessionArrays,
    group_by_user,
    item_counts,
    n_training_pairs,
)
from rayrec.platform.checkpoint import load_checkpoint, load_model
from rayrec.platform.evaluation.protocols import evaluate_next_item
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.families import TrainData
from rayrec.platform.training.loop import run_local
from rayrec.platform.training.optim import OptimConfig, apply_lr_schedule, build_optimizer

N = 30
ITEM_IDS = [str(i) for i in range(N)]
SMALL = {"states": 3, "layers": [{"units": 8}, {"units": 4, "activation": "tanh"}], "shortcut": 1}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_valid_structures_build_with_hand_counted_parameters() -> None:
    # N=10, layers 8 (relu), 4 (tanh), shortcut 1 -> the loss reads layer2 + layer1: D = 12
    # E 10*8 + u 8 = 88; theta 10; layer1 W 8*8 + b 8 = 72; layer2 W 4*4 + Z 4*8 + b 4 = 52;
    # output 10*12 + 10 = 130; total 352
    cfg = DRNNConfig(**SMALL)
    assert _n_params(build(cfg, 10)) == 352
    assert codegen.param_counts(cfg.units, cfg.shortcut, 10) == {
        "embedding": 88, "theta": 10, "layer1": 72, "layer2": 52, "output": 130, "total": 352}
    # Table I default: [1000, 100, 100] ReLU, 4 states, no shortcut, N=100:
    # E 100*1000 + 1000; theta 100; layer1 1000^2 + 1000; layer2 100^2 + 100*1000 + 100;
    # layer3 100^2 + 100^2 + 100; output 100*100 + 100
    default = DRNNConfig()
    assert default.units == [1000, 100, 100] and default.activations == ["relu"] * 3
    assert default.states == 4 and default.history and default.shortcut == 0
    hand = (100 * 1000 + 1000) + 100 + (1000**2 + 1000) + (100**2 + 100 * 1000 + 100) \
        + (100**2 + 100**2 + 100) + (100 * 100 + 100)
    assert _n_params(build(default, 100)) == hand
    text = codegen.describe(cfg.states, cfg.units, cfg.activations, cfg.shortcut, cfg.history, 10)
    assert "352 parameters" in text and "history" in text


@pytest.mark.parametrize("raw, path", [
    ({"states": 0}, "model.states"),
    ({"layers": [{"units": 8}, {"units": 0}]}, r"model.layers\[1\].units"),
    ({"layers": [{"units": 8}, {"units": 4}, {"units": 2, "activation": "swish"}]},
     r"model.layers\[2\].activation"),
    ({"layers": [{"units": 8, "activaton": "relu"}]}, r"model.layers\[0\].activaton"),
    ({"layers": []}, "model.layers"),
    ({"layers": [{"units": 8}, {"units": 4}], "shortcut": 2}, "model.shortcut"),
    ({"shortcut": 3}, "model.shortcut"),  # the default has 3 layers
    ({"colour": 1}, "colour"),
])
def test_invalid_structures_fail_naming_the_key(raw: dict, path: str) -> None:
    with pytest.raises(ValueError, match=path):
        DRNNConfig(**raw)
    with pytest.raises(ValueError, match=path):  # and inside a job config, before any training
        TrainJobConfig.model_validate({"model": {"name": "drnn", **raw}, "ray": {"use_ray": False}})


def test_history_weights_hand_case() -> None:
    # row 0: θ = 1, 1, 2 -> ε = 1/(1+1+2), 1/(1+2), 2/2; row 1: no history; row 2: θ = 3 -> 1
    theta = torch.tensor([1.0, 1.0, 2.0, 3.0])
    offsets = torch.tensor([0, 3, 3, 4])
    eps = history_weights(theta, offsets)
    assert torch.allclose(eps, torch.tensor([0.25, 1 / 3, 1.0, 1.0]))


def _pair(history_on: bool, seed: int = 0) -> tuple[DRNNScorer, DRNNScorer]:
    torch.manual_seed(seed)
    on = build(DRNNConfig(**SMALL, history=True), N)
    off = build(DRNNConfig(**SMALL, history=False), N)
    off.load_state_dict(on.state_dict())  # same weights: history is no parameter
    with torch.no_grad():  # θ away from 1 so ε is not uniform
        on.theta_raw.copy_(torch.linspace(-1.0, 2.0, N))
        off.theta_raw.copy_(on.theta_raw)
    return DRNNScorer(on), DRNNScorer(off)


def test_history_off_equals_on_when_the_sequence_fits_the_window() -> None:
    on, off = _pair(True)
    short = [[3, 4], [5, 6, 7], [9]]  # x <= w = 3: no page before the window
    assert torch.equal(on.encode(short), off.encode(short))
    long = [[1, 2, 3, 4, 5], [8, 8, 6, 7]]  # x > w: the column feeds the first state
    assert not torch.allclose(on.encode(long), off.encode(long))
    # and the history weights do depend on the older pages (not only their count)
    assert not torch.allclose(on.encode([[1, 2, 3, 4, 5]]), on.encode([[9, 2, 3, 4, 5]]))
    assert torch.equal(off.encode([[1, 2, 3, 4, 5]]), off.encode([[9, 2, 3, 4, 5]]))


def _steps(scorer: DRNNScorer, seqs: list[list[int]]) -> list[torch.Tensor]:
    """Scores after every event of ``seqs`` fed one row, reset at each sequence start."""
    state, out = scorer.init_state(1), []
    for s in seqs:
        for j, item in enumerate(s):
            scores, state = scorer.step(state, torch.tensor([item]), torch.tensor([j == 0]))
            out.append(scores[0])
    return out


def test_session_resets_and_step_matches_encode() -> None:
    scorer, _ = _pair(True)
    a, b = [1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11]
    scores = _steps(scorer, [a, b])
    for j in range(len(b)):  # after the reset, b's scores are those of b alone
        enc = scorer.encode([b[:j + 1]])
        assert torch.allclose(scores[len(a) + j], (enc @ scorer.model.out_W.t() + scorer.model.out_b)[0],
                              atol=1e-6)
    fresh = _steps(scorer, [b])
    for x, y in zip(scores[len(a):], fresh, strict=True):
        assert torch.allclose(x, y, atol=1e-6)
    assert isinstance(scorer, ServableScorer)
    _, idx = scorer.topk(scorer.encode([a]), 5)
    assert idx[0].tolist() == torch.topk(scores[len(a) - 1], 5).indices.tolist()


def test_user_sequences_carry_history_across_sessions_and_new_users_start_fresh() -> None:
    # user 0: sessions [1,2,3,4] then [5,6,7]; user 1: session [5,6,7] (same pages)
    offsets = np.array([0, 4, 7, 10])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 5, 6, 7])
    ts = np.array([0, 1, 2, 3, 100, 101, 102, 50, 51, 52], dtype=np.float64)
    users = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    joined = group_by_user(SessionArrays(offsets, items, ts, users=users))
    seqs = [joined.items[joined.offsets[i]:joined.offsets[i + 1]].tolist() for i in range(joined.n_sessions)]
    assert seqs == [[1, 2, 3, 4, 5, 6, 7], [5, 6, 7]]
    scorer, _ = _pair(True)
    scores = _steps(scorer, seqs)
    # user 0's second session is scored with the first's pages (window + history column) ...
    carried = scorer.encode([[1, 2, 3, 4, 5, 6, 7]])
    assert torch.allclose(scores[6], (carried @ scorer.model.out_W.t() + scorer.model.out_b)[0], atol=1e-6)
    session_only = _steps(scorer, [[1, 2, 3, 4], [5, 6, 7]])
    assert not torch.allclose(scores[6], session_only[6])
    # ... and user 1, a new user, equals a fresh start on the same pages
    fresh = _steps(scorer, [[5, 6, 7]])
    for x, y in zip(scores[7:], fresh, strict=True):
        assert torch.allclose(x, y, atol=1e-6)
    assert torch.allclose(session_only[6], fresh[2], atol=1e-6)


class _Env:
    def __init__(self, arrays: SessionArrays) -> None:
        self.train, self.n_items, self.device, self.sparse_rows = arrays, N, torch.device("cpu"), True


def test_one_window_per_pair_with_the_pair_as_last_target() -> None:
    arrays = _fixture(40)
    t, start = training_windows(arrays.offsets, arrays.items.size)
    assert t.size == n_training_pairs(arrays)
    job = _job(Path("/nonexistent"), epochs=1)
    task = DRNNTask(job)
    task.build(_Env(arrays), torch.Generator().manual_seed(0))
    window, wlen, hist, offs, targets = task._batch(np.arange(t.size))
    rows = torch.arange(t.size)
    assert torch.equal(window[rows, wlen - 1], torch.from_numpy(arrays.items[t]))
    assert torch.equal(targets[rows, wlen - 1], torch.from_numpy(arrays.items[t + 1]))
    assert int((targets >= 0).sum()) == int(wlen.sum()) and int(wlen.max()) == job.model.states
    # the history is exactly the pages before the window, in order
    for r in (0, int(np.argmax(t - start)), t.size - 1):
        ws = max(int(start[r]), int(t[r]) - job.model.states + 1)
        assert hist[offs[r]:offs[r + 1]].tolist() == arrays.items[start[r]:ws].tolist()


def test_lr_step_schedule() -> None:
    cfg = OptimConfig(name="sgd", lr=0.1, momentum=0.0, lr_step_epochs=2, lr_step_gamma=0.2)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)
    lrs = []
    for epoch in range(5):
        apply_lr_schedule(opt, cfg, epoch)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.1, 0.02, 0.02, 0.004])
    with pytest.raises(ValueError, match="lr_step_gamma"):
        OptimConfig(lr_step_gamma=0.0)


def _fixture(n_sessions: int = 300, seed: int = 0) -> SessionArrays:
    """Sessions that walk a fixed cycle of items: item i is always followed by (i + 1) % N."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, size=n_sessions)
    starts = rng.integers(0, N, size=n_sessions)
    items = np.concatenate([(s + np.arange(n)) % N for s, n in zip(starts, lengths, strict=True)])
    offsets = np.zeros(n_sessions + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return SessionArrays(offsets, items)


def _job(tmp_path: Path, epochs: int) -> TrainJobConfig:
    return TrainJobConfig.model_validate({
        "model": {"name": "drnn", **SMALL, "layers": [{"units": 16}, {"units": 16}]},
        "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.0, "lr_step_epochs": 4, "lr_step_gamma": 0.5},
        "train": {"epochs": epochs, "batch_size": 32, "seed": 0},
        "eval": {"ks": [1, 5], "batch_size": 32, "every": epochs},
        "run": {"storage_path": str(tmp_path / "runs")},
        "ray": {"use_ray": False},
    })


def test_golden_smoke_loss_falls_and_checkpoint_roundtrip(tmp_path) -> None:
    arrays = _fixture()
    job = _job(tmp_path, epochs=5)
    assert job.optim.name == "sgd" and job.train.shuffle  # the model's job defaults apply
    saved: dict[int, Path] = {}

    def report(metrics, ck_dir):
        if ck_dir is not None:
            saved[metrics["epoch"]] = Path(shutil.copytree(ck_dir, tmp_path / f"ck_{metrics['epoch']}"))

    data = TrainData(arrays, arrays, ITEM_IDS, item_counts(arrays, N))
    out = run_local(job, data, report=report)
    hist = out["history"]
    assert all(h["examples"] == n_training_pairs(arrays) for h in hist)
    assert hist[-1]["loss"] < 0.9 * hist[0]["loss"], (hist[0], hist[-1])
    # the loop applied the step schedule: epochs 0-3 at lr 0.5, epoch 4 (the 5th) at 0.25
    assert load_checkpoint(saved[4]).optim_state["param_groups"][0]["lr"] == pytest.approx(0.5)
    assert load_checkpoint(saved[5]).optim_state["param_groups"][0]["lr"] == pytest.approx(0.25)
    loaded = load_model(saved[5], expected_item_ids=ITEM_IDS, kind="session")
    assert loaded.config == job.model
    scorer = loaded.scorer()
    res = evaluate_next_item(scorer, arrays.offsets, arrays.items, (1, 5), batch_size=32)
    assert res["recall@5"] > 0.5
    for key in ("recall@1", "recall@5", "mrr@5"):
        assert hist[-1][key] == pytest.approx(res[key], abs=1e-12), key
    fresh = evaluate_next_item(DRNNScorer(build(job.model, N)), arrays.offsets, arrays.items, (5,), 32)
    assert fresh["recall@5"] < res["recall@5"] - 0.2
    assert isinstance(scorer, ServableScorer)
    seq = arrays.items[arrays.offsets[3]:arrays.offsets[4]].tolist()
    state = scorer.init_state(1)
    for j, item in enumerate(seq):
        scores, state = scorer.step(state, torch.tensor([item]), torch.tensor([j == 0]))
    _, idx = scorer.topk(scorer.encode([seq]), 5)
    assert idx[0].tolist() == torch.topk(scores[0], 5).indices.tolist()


def test_codegen_job_prints_the_graph_and_the_built_parameter_count(tmp_path, capsys) -> None:
    from rayrec.jobs import codegen as job

    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text('{"items": {"n_items": 10}}')
    layers = "model.layers=[{units: 8}, {units: 4, activation: tanh}]"
    assert job.main([f"data.path={data}", "model.name=drnn", "model.states=3", layers,
                     "model.shortcut=1"]) == 0
    out = capsys.readouterr().out
    assert "352 parameters" in out and "layer2: 4 units, tanh" in out
    assert _n_params(build(DRNNConfig(**SMALL), 10)) == 352
    with pytest.raises(SystemExit) as exc:  # a bad structure exits 2 naming the key
        job.main([f"data.path={data}", "model.name=drnn", "model.layers=[{units: 8, activation: foo}]"])
    assert exc.value.code == 2 and r"model.layers[0].activation" in capsys.readouterr().err
    assert job.main([f"data.path={tmp_path / 'none'}", "model.name=drnn"]) == 1
    assert "manifest.json" in capsys.readouterr().err

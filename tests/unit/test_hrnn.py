"""HRNN-meta (seed 001, Ma et al. KDD 2020): the properties the paper states, on small tensors
and a generated fixture with item metadata (no Ray: ``ray.use_ray=false``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayrec.models.hrnn import (
    MAX_DT_S,
    TIME_EDGES_S,
    HRNNMeta,
    HRNNMetaConfig,
    HRNNScorer,
    event_context,
    group_by_user,
    rewarded_sampled_ce,
    time_bucket,
)
from rayrec.models.losses import LossConfig, sampled_loss
from rayrec.models.samplers import AliasSampler, logq_tables
from rayrec.models.session_parallel import ItemFeatures, SessionArrays
from rayrec.platform.data import session_arrays
from tests.fixtures import synthetic_sessions, synthetic_user_sessions

# ---------------------------------------------------------------- time (section 2.2, Table 2)


def test_time_bucket_exact_edges_zero_and_saturation():
    edges = np.asarray(TIME_EDGES_S)
    assert time_bucket(edges).tolist() == list(range(len(edges)))  # an edge opens its bucket
    below = np.nextafter(edges[1:], -np.inf)
    assert time_bucket(below).tolist() == list(range(len(edges) - 1))  # just under: the bucket before
    assert int(time_bucket(0.0)) == 0
    last = len(edges) - 1
    assert time_bucket([MAX_DT_S, MAX_DT_S * 2, 1e15]).tolist() == [last] * 3


def test_time_bucket_is_monotone():
    dt = np.r_[0.0, np.logspace(-3, 10, 2000)]
    b = time_bucket(dt)
    assert np.all(np.diff(b) >= 0) and b[0] == 0 and b[-1] == len(TIME_EDGES_S) - 1
    assert set(b.tolist()) == set(range(len(TIME_EDGES_S)))


def test_negative_time_delta_names_the_event():
    a = SessionArrays(np.array([0, 3]), np.array([1, 2, 3]), np.array([10.0, 20.0, 5.0]))
    with pytest.raises(ValueError, match=r"-15.0 s at event 1 \(sequence 0"):
        event_context(a, HRNNMetaConfig())


def test_train_and_scoring_encode_time_alike():
    """The scorer reads the same buckets and start bits as training (one function)."""
    ts = np.array([0.0, 0.0, 30.0, 4000.0, 4000.0 + 86400.0 * 2])
    a = SessionArrays(np.array([0, 5]), np.array([0, 1, 2, 3, 4]), ts)
    cfg = HRNNMetaConfig(layers=(8,), embedding=4, mlp=8)
    ctx = event_context(a, cfg)
    assert ctx["bucket"].tolist() == [0, 2, 5, 7, 0]  # 0 s, 30 s, 3970 s, 2 d, last event
    assert ctx["start"].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]  # > 1800 s
    sc = HRNNScorer(HRNNMeta(cfg, 5), a)
    assert torch.equal(sc.ctx["bucket"], torch.from_numpy(ctx["bucket"]))


def test_time_delta_changes_the_scores():
    """Table 2: the same history with Δt 0 vs 1 day gives other scores."""
    torch.manual_seed(0)
    a = SessionArrays(np.array([0, 2, 4]), np.array([3, 4, 3, 4]), np.array([0.0, 0.0, 0.0, 86400.0]))
    sc = HRNNScorer(HRNNMeta(HRNNMetaConfig(layers=(8,), embedding=4, mlp=8), 6), a)
    s, _ = sc.step(sc.init_state(2), torch.tensor([3, 3]), torch.ones(2, dtype=torch.bool),
                   positions=torch.tensor([0, 2]))
    assert not torch.allclose(s[0], s[1])


# ---------------------------------------------------------------- metadata decoder (eq. 2)


def _feats(n_items: int, genres: list[list[int]]) -> ItemFeatures:
    width = max(len(g) for g in genres)
    ids = np.full((n_items, width), -1, dtype=np.int64)
    for i, g in enumerate(genres):
        ids[i, : len(g)] = g
    return ItemFeatures(("genre",), ids, np.zeros(width, dtype=np.int64), (6,))


def _meta_model(decoder="mixed", n_items=6):
    cfg = HRNNMetaConfig(layers=(8,), embedding=4, mlp=8, feature_dim=4, item_features=("genre",),
                         decoder=decoder, inputs=("item_id", "item_features"))
    m = HRNNMeta(cfg, n_items)
    m.set_data(_feats(n_items, [[1], [2, 3], [1], [4], [5], [2, 3]]))
    m.reset_parameters(torch.Generator().manual_seed(0))
    return m


def test_lambda_one_id_tables_change_no_score_and_get_no_gradient():
    m = _meta_model()
    out = torch.randn(3, 8)
    cols = torch.tensor([0, 1, 2, 5])
    s1 = m.score_cols(out, cols, torch.ones(3))
    with torch.no_grad():
        m.Wy.add_(torch.randn_like(m.Wy))
        m.By.add_(1.0)
    s2 = m.score_cols(out, cols, torch.ones(3))
    assert torch.equal(s1, s2)
    s2.sum().backward()
    for t in (m.Wy, m.By):
        assert t.grad is None or float(t.grad.abs().sum()) == 0.0
    assert float(m.P.grad.abs().sum()) > 0.0
    # at lam < 1 the ID tables do matter (the check above can fail)
    assert not torch.equal(m.score_cols(out, cols, torch.full((3,), 0.5)),
                           _meta_model().score_cols(out, cols, torch.full((3,), 0.5)))


def test_cold_items_score_from_metadata_only():
    m = _meta_model()
    m.cold = torch.tensor([False, False, False, False, True, True])
    w1, b1 = m.folded_decoder()
    with torch.no_grad():
        m.Wy.add_(1.0)
        m.By.add_(1.0)
    w2, b2 = m.folded_decoder()
    assert torch.equal(w1[4:], w2[4:]) and torch.equal(b1[4:], b2[4:])  # cold: lam = 1
    assert not torch.equal(w1[:4], w2[:4])  # warm: meta_lambda = 0.5 mixes the ID rows in


def test_equal_features_give_equal_scores():
    m = _meta_model(decoder="meta")
    out = torch.randn(4, 8)
    s = m.score_cols(out, torch.arange(6), None)
    assert torch.allclose(s[:, 1], s[:, 5]) and torch.allclose(s[:, 0], s[:, 2])  # same genres
    assert not torch.allclose(s[:, 0], s[:, 3])


def test_unknown_metadata_is_id_zero_and_counted(tmp_path):
    from rayrec.platform.data import load_item_features

    pq.write_table(pa.Table.from_pandas(pd.DataFrame({
        "item_id": ["a", "b", "c"], "genre": [["x", "y"], ["y"], ["z"]], "brand": ["p", None, "q"]}),
        preserve_index=False), tmp_path / "item_meta.parquet")
    # items: a, b seen in training; c cold (its genre z and brand q were never trained); d has no row
    f = load_item_features(str(tmp_path), ["genre", "brand"], ["a", "b", "c", "d"], np.array([3, 1, 0, 0]))
    g = f.ids[:, f.slot_field == 0]
    br = f.ids[:, f.slot_field == 1]
    assert g[0].tolist() == [1, 2] and g[1].tolist() == [2, -1]
    assert g[2].tolist() == [0, -1] and g[3].tolist() == [0, -1]
    assert br[:, 0].tolist() == [1, 0, 0, 0]
    assert f.vocab_sizes == (3, 2) and f.n_unknown == {"genre": 2, "brand": 3}


def test_missing_feature_column_names_it_and_those_present(tmp_path):
    from rayrec.platform.config import load_config
    from rayrec.platform.data import DataError
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.families import SessionFamily

    root = _fixture(tmp_path)
    cfg = load_config(TrainJobConfig, None, ["model.name=hrnn_meta", f"data.path={root}", "ray.use_ray=false",
                                             "model.inputs=[item_id,item_features]", "model.item_features=[colour]"])
    with pytest.raises(DataError, match=re.escape("model.item_features: column(s) ['colour'] not in") +
                       r".*columns present: \['genre', 'brand'\]"):
        SessionFamily.load(cfg)


def test_features_without_item_features_key_is_a_config_error():
    with pytest.raises(ValueError, match="need model.item_features"):
        HRNNMetaConfig(inputs=("item_id", "item_features"))


# ---------------------------------------------------------------- loss (sections 3.1, 3.3)


def test_reward_zero_lowers_the_target_score_under_a_step():
    """Section 3.3: the loss -(r z_t - log sum exp z); one SGD step on the item weights moves
    the target's score down for r = 0 and up for r = 1 (the gradient sign)."""
    torch.manual_seed(0)
    w0 = torch.randn(10, 6)
    for row in range(4):
        h = torch.randn(1, 6)
        y = torch.tensor([1 + row])
        cols = torch.cat([y, torch.tensor([0, 5, 6])])
        deltas = {}
        for r in (0.0, 1.0):
            w = w0.clone().requires_grad_(True)
            rewarded_sampled_ce(h @ w[cols].t(), cols, None, 0.0, torch.full((1,), r)).backward()
            with torch.no_grad():
                deltas[r] = float((h * (w - 0.1 * w.grad)[y]).sum() - (h * w0[y]).sum())
        assert deltas[0.0] < 0.0 < deltas[1.0], deltas
    h = torch.randn(4, 6)
    y = torch.tensor([1, 2, 3, 4])
    cols = torch.cat([y, torch.tensor([0, 5, 6])])
    # reward 1 equals the fused sampled cross-entropy
    s = h @ w0[cols].t()
    assert torch.allclose(rewarded_sampled_ce(s, cols, None, 0.0, torch.ones(4)),
                          sampled_loss(LossConfig(logq=0.0), s, cols), atol=1e-5)


def test_sampled_ce_with_logq_approaches_the_full_softmax():
    """Eq. 4: subtracting log q makes the sampled gradient on the logits an estimate of the full
    softmax's (p - onehot); the error shrinks as S grows past the catalog size m."""
    m = 200
    g = torch.Generator().manual_seed(0)
    counts = np.random.default_rng(0).integers(1, 50, m).astype(np.float64)
    logits = torch.randn(m, generator=g, dtype=torch.float64)
    target = 7
    full = torch.softmax(logits, 0)
    full[target] -= 1.0
    errs = {}
    for s_n in (m // 10, m, 100 * m):
        sampler = AliasSampler(counts, 0.75, 10 * s_n, torch.Generator().manual_seed(1))
        lq_t, lq_s = logq_tables(counts, 1, sampler, s_n)
        errs_s = []
        for _ in range(5):
            smp = sampler.sample(s_n)
            cols = torch.cat([torch.tensor([target]), smp])
            z = logits[cols].clone().requires_grad_(True)
            log_q = torch.cat([lq_t[[target]], lq_s[smp]]).double()
            cfg = LossConfig(mask_sample_hits=False)
            loss = rewarded_sampled_ce(z.unsqueeze(0), cols, log_q, cfg.logq, torch.ones(1), False)
            loss.backward()
            grad = torch.zeros(m, dtype=torch.float64).index_add_(0, cols, z.grad)
            errs_s.append(float((grad - full).abs().sum()))
        errs[s_n] = float(np.mean(errs_s))
    assert errs[100 * m] < errs[m] < errs[m // 10]
    assert errs[100 * m] < 0.15 < errs[m // 10]  # measured 0.09 vs 1.8


def test_n_sample_sqrt_is_table_8s_sizes():
    cfg = HRNNMetaConfig()
    assert [cfg.loss.samples(n) for n in (65_133, 131_263, 1_181_000)] == [255, 362, 1087]
    assert cfg.loss.sampler == "alias" and cfg.loss.sample_alpha == 0.75


# ---------------------------------------------------------------- memory: user


def test_group_by_user_joins_a_users_sessions_in_time_order():
    a = SessionArrays(np.array([0, 2, 4, 5]), np.array([1, 2, 3, 4, 5]), np.array([0.0, 1.0, 5.0, 6.0, 3.0]),
                      users=np.array([0, 0, 1, 1, 0]))
    u = group_by_user(a)
    assert u.offsets.tolist() == [0, 3, 5]
    assert u.items.tolist() == [1, 2, 5, 3, 4]


# ---------------------------------------------------------------- end to end (no Ray)


def _fixture(tmp_path: Path) -> str:
    root = synthetic_sessions(tmp_path / "d", n_events=3000, n_items=100)
    items = pd.read_parquet(f"{root}/items.parquet")
    meta = pd.DataFrame({"item_id": items["item_id"].astype(str),
                         "genre": [[f"g{int(x) % 5}", f"g{int(x) % 3 + 5}"] for x in items["item_id"]],
                         "brand": [f"b{int(x) % 7}" for x in items["item_id"]]})
    pq.write_table(pa.Table.from_pandas(meta, preserve_index=False), f"{root}/item_meta.parquet")
    return root


def test_train_job_with_metadata_then_next_item_evaluation(tmp_path, capsys):
    from rayrec.jobs.train import main
    from rayrec.platform.checkpoint import load_model
    from rayrec.platform.evaluation.protocols import evaluate_next_item

    root = _fixture(tmp_path)
    rc = main(["model.name=hrnn_meta", f"data.path={root}", "data.valid_split=test", "ray.use_ray=false",
               "train.epochs=2", "train.batch_size=16", "model.inputs=[item_id,item_features,feedback,time]",
               "model.item_features=[genre,brand]", "model.decoder=mixed", "model.trend_bias.weight=0.2",
               f"run.storage_path={tmp_path / 'runs'}", "run.name=h"])
    out = capsys.readouterr().out
    assert rc == 0, out
    ck = re.findall(r"^checkpoint: (\S+)$", out, re.MULTILINE)[-1]
    meta = json.loads((Path(ck) / "meta.json").read_text())
    assert meta["model"] == "hrnn_meta" and meta["epoch"] == 2
    loaded = load_model(ck, kind="session")
    model = loaded.model
    assert model.Ef.shape[0] == 5 + 3 + 7 + 2  # vocabularies (with id 0 each) restored from the checkpoint
    test = session_arrays(root, "test", context=True)
    n_items = model.n_items
    res = evaluate_next_item(HRNNScorer(model, test), test.offsets, test.items, (20,))
    assert res["n"] > 100 and 0.0 <= res["mrr@20"] <= res["recall@20"] <= 1.0
    assert res["recall@20"] > 2 * 20 / n_items  # well above a random ranking
    assert 1.0 < meta["metrics"]["ppl"] < n_items  # reported with every validation, below uniform


def test_reward_keys_that_name_no_event_type_of_the_data_are_an_error(tmp_path):
    """A typo in ``loss.rewards`` used to train every event at reward 1 without a word."""
    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.trainer import fit

    root = _fixture(tmp_path)
    job = load_config(TrainJobConfig, None, [
        "model.name=hrnn_meta", f"data.path={root}", "data.valid_split=null", "ray.use_ray=false",
        "train.epochs=1", "train.max_steps_per_epoch=2", "model.loss.rewards={purchse: 0.5}",
        f"run.storage_path={tmp_path / 'runs'}", "run.name=typo"])
    with pytest.raises(ValueError, match=r"model.loss.rewards: event type\(s\) \['purchse'\] are not in "
                                         r"the training data; its event types: \["):
        fit(job, log=lambda _m: None)


def test_preprocess_writes_item_meta_and_quarantines_duplicates(tmp_path):
    from rayrec.platform.config import load_config
    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.preprocessing.pipeline import run_preprocess

    ev = tmp_path / "x.tsv"
    ev.write_text("SessionId\tItemId\tTime\n" + "".join(f"{i // 3}\t{10 + i % 4}\t{1396310400 + i}\n"
                                                      for i in range(24)))
    meta = tmp_path / "meta.csv"
    meta.write_text("item_id,genre,brand\n10,a|b,p\n11,b,q\n11,c,q\n12,,r\n")
    cfg = load_config(PreprocessJobConfig, None, [
        "source.format=rsc15_prepared", f"source.paths={{train_full: {ev}, test: {ev}}}", "split.name=predefined",
        f"source.item_metadata={meta}", f"output.path={tmp_path / 'o'}", "ray.use_ray=false",
        "filter.min_session_length=1", "filter.min_item_support=1", "split.min_test_session_length=1"])
    manifest = run_preprocess(cfg, log=lambda _m: None)
    assert manifest["counts"]["item_meta"]["quarantined"] == {"no item_id": 0, "duplicate item_id": 1}
    got = pd.read_parquet(tmp_path / "o" / "item_meta.parquet")
    assert got["item_id"].tolist() == ["10", "11", "12"]
    assert list(got.loc[0, "genre"]) == ["a", "b"]
    assert pd.read_parquet(tmp_path / "o" / "item_meta_quarantine.parquet")["reason"].tolist() == ["duplicate item_id"]


# ---------------------------------------------------------------- sequences (train.sequence_key) and train.bptt


def test_memory_user_and_train_sequence_key_must_agree():
    from rayrec.platform.config import ConfigError, load_config
    from rayrec.platform.training.config import TrainJobConfig

    with pytest.raises(ConfigError, match="set train.sequence_key=user"):
        load_config(TrainJobConfig, None, ["model.name=hrnn_meta", "model.memory=user"])
    with pytest.raises(ConfigError, match="set model.memory=user"):
        load_config(TrainJobConfig, None, ["model.name=hrnn_meta", "train.sequence_key=user"])
    job = load_config(TrainJobConfig, None, ["model.name=hrnn_meta", "model.memory=user", "train.sequence_key=user"])
    assert job.train.sequence_key == "user" and job.train.bptt == 1


def test_bptt_over_one_needs_a_model_whose_task_supports_it():
    from rayrec.platform.config import ConfigError, load_config
    from rayrec.platform.training.config import TrainJobConfig

    with pytest.raises(ConfigError, match="train.bptt=4: gru4rec trains one step at a time"):
        load_config(TrainJobConfig, None, ["model.name=gru4rec", "train.bptt=4"])
    assert load_config(TrainJobConfig, None, ["model.name=hrnn_meta", "train.bptt=4"]).train.bptt == 4


def test_sequence_key_user_joins_each_users_sessions_for_any_session_model(tmp_path):
    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.trainer import check_inputs

    root = synthetic_user_sessions(tmp_path)
    base = ["model.name=gru4rec", f"data.path={root}", "data.valid_split=test", "ray.use_ray=false"]
    sess = check_inputs(load_config(TrainJobConfig, None, base))
    user = check_inputs(load_config(TrainJobConfig, None, [*base, "train.sequence_key=user"]))
    by_session = session_arrays(root, "train_full", context=True)
    n_users = len(set(by_session.users.tolist()))
    for got, split in ((user.train, by_session), (user.valid, session_arrays(root, "test", context=True))):
        assert got.n_events == split.n_events
        assert got.n_sessions == len(set(split.users.tolist())) < split.n_sessions
        for s in range(got.n_sessions):
            a, b = got.offsets[s], got.offsets[s + 1]
            assert len(set(got.users[a:b].tolist())) == 1  # one user per sequence
            assert (np.diff(got.ts[a:b]) >= 0).all()  # in time order
    assert sess.train.n_sessions == by_session.n_sessions and user.train.n_sessions == n_users


def test_sequence_key_user_without_user_ids_names_the_key(tmp_path):
    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.families import TrainingInputError
    from rayrec.platform.training.trainer import check_inputs

    root = synthetic_sessions(tmp_path / "d", n_events=600, n_items=30)  # SessionId/ItemId/Time: no users
    job = load_config(TrainJobConfig, None, ["model.name=gru4rec", f"data.path={root}", "ray.use_ray=false",
                                             "train.sequence_key=user"])
    with pytest.raises(TrainingInputError, match="train.sequence_key=user: data.train_split 'train_full' has no user_id"):
        check_inputs(job)


def _task_env(arrays: SessionArrays, n_items: int):
    from rayrec.models.contract import TaskEnv

    counts = np.bincount(arrays.items, minlength=n_items)
    return TaskEnv(rank=0, world=1, device=torch.device("cpu"), item_ids=[str(i) for i in range(n_items)],
                   train=arrays, valid=None, train_counts=counts, evaluate=lambda *a: {}, log=lambda _m: None)


def test_bptt_windows_cover_every_pair_once_in_fewer_optimiser_steps():
    from types import SimpleNamespace

    from rayrec.models.hrnn import HRNNTask
    from rayrec.models.session_parallel import n_training_pairs, session_parallel_batches

    rng = np.random.default_rng(0)
    lens = rng.integers(2, 9, size=40)
    a = SessionArrays(np.r_[0, np.cumsum(lens)], rng.integers(0, 30, size=int(lens.sum())),
                      np.arange(int(lens.sum()), dtype=np.float64) * 60.0)
    steps = sum(1 for _ in session_parallel_batches(a, 8))
    for bptt in (1, 3):
        job = SimpleNamespace(model=HRNNMetaConfig(layers=(8,), embedding=4, mlp=8),
                              train=SimpleNamespace(batch_size=8, shuffle=False, bptt=bptt))
        task = HRNNTask(job)
        env = _task_env(a, 30)
        module = task.build(env, torch.Generator().manual_seed(0))
        windows = list(task.batches(env, module, 0, 8, np.random.default_rng(0)))
        assert len(windows) == task.num_batches(env, 8) == -(-steps // bptt)
        assert all(len(w) <= bptt for w, _ in windows)
        rows = 0
        for w in windows:
            loss, n = task.loss(module, w)
            assert torch.isfinite(loss)
            rows += n
        assert rows == n_training_pairs(a)


def test_bptt_window_backpropagates_into_the_earlier_steps():
    from rayrec.models.hrnn import HRNNStep

    cfg = HRNNMetaConfig(inputs=("item_id",), layers=(8,), embedding=4, mlp=8, dropout_p_hidden=0.0)
    model = HRNNMeta(cfg, 10)
    step = HRNNStep(model)
    z = torch.zeros(2, dtype=torch.long)
    ctx = {"bucket": z, "start": z.float(), "event": z, "value": z.float()}
    cols = torch.tensor([4, 5, 6])
    s1 = (None, None, torch.tensor([0, 1]), ctx, cols, None, None, None)
    s2 = (None, None, torch.tensor([2, 3]), ctx, cols, None, None, None)
    outs, _ = step(model.init_hidden(2), [s1, s2])
    outs[1].sum().backward()
    assert float(model.E.grad[[0, 1]].abs().sum()) > 0  # step 2's scores reach step 1's inputs
    model.zero_grad()
    _, h = step(model.init_hidden(2), [s1])
    outs2, _ = step([x.detach() for x in h], [s2])  # bptt 1: the state is cut between the steps
    outs2[0].sum().backward()
    assert float(model.E.grad[[0, 1]].abs().sum()) == 0.0

"""Attention CF and DAN (seed 002 sections 4, 5.2), the balanced loss L-hat (section 4.2),
negatives that exclude S_u, the multi-positive sampled-candidates protocol (sections 5.1,
5.3) and a golden smoke on planted clusters (attention beats popularity)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayrec.models.attention_cf import (
    DAN,
    AttentionCF,
    AttentionCFConfig,
    DANConfig,
    pad_rows,
    prepare_history,
)
from rayrec.models.losses import balanced_logistic
from rayrec.models.samplers import AliasSampler, PopularitySampler, sample_excluding
from rayrec.platform.evaluation.protocols import (
    draw_candidates,
    evaluate_candidate_set,
    history_cases,
)


def _model(hops=3, hidden=8, d=4, n=12, seed=0):
    emb = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return AttentionCF(AttentionCFConfig(dim=d, hops=hops, hidden=hidden), emb,
                       torch.Generator().manual_seed(seed + 1))


def test_parameter_count_section_3():
    m = AttentionCF(AttentionCFConfig(), torch.zeros(50, 64))
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    K, d, dp = 10, 64, 128
    assert n == (2 * K + 1) * (d * dp + dp) + dp == 174_848
    assert "item_vectors" not in dict(m.named_parameters())  # the embeddings are frozen
    assert "item_vectors" in m.state_dict()


def test_orthogonal_init():
    m = _model(hidden=8, d=4)
    w = m.h.weight  # (8, 4): orthonormal columns
    assert torch.allclose(w.T @ w, torch.eye(4), atol=1e-5)
    assert float(m.phi.detach().norm()) == pytest.approx(1.0, abs=1e-5)


def test_attention_weights_sum_to_one_zero_on_padding_and_follow_the_query():
    m = _model()
    hist = torch.tensor([[1, 2, 3, -1, -1], [4, 5, 6, 7, 8]])
    q = torch.tensor([[9, 10], [9, 11]])
    maps = m.attention(hist, q)
    assert len(maps) == 3
    for p in maps:
        assert torch.allclose(p.sum(-1), torch.ones(2, 2), atol=1e-6)
        assert (p[0, :, 3:] == 0).all()
    assert not torch.allclose(maps[0][0, 0], maps[0][0, 1])  # another query attends elsewhere
    assert not torch.allclose(maps[-1][1, 0], maps[-1][1, 1])


def test_history_order_and_padding_are_irrelevant():
    m = _model()
    q = torch.tensor([[0, 9, 10]])
    a = m(torch.tensor([[1, 2, 3, 4]]), q)
    b = m(torch.tensor([[4, 2, -1, 1, 3]]), q)
    assert torch.allclose(a, b, atol=1e-5)
    d = DAN(DANConfig(dim=4, layers=[8, 8]), m.item_vectors)
    assert torch.allclose(d(torch.tensor([[1, 2, 3]]), q), d(torch.tensor([[3, -1, 1, 2]]), q), atol=1e-5)


def test_empty_history_is_a_value_error_not_nan():
    m = _model()
    with pytest.raises(ValueError, match="history rows \\[1\\] are empty"):
        m(torch.tensor([[1, 2], [-1, -1]]), torch.tensor([[3], [4]]))
    with pytest.raises(ValueError, match="empty"):
        DAN(DANConfig(dim=4), m.item_vectors)(torch.tensor([[-1]]), torch.tensor([[3]]))


def test_wrong_embedding_dim_names_the_key():
    with pytest.raises(ValueError, match="model.dim=64"):
        AttentionCF(AttentionCFConfig(), torch.zeros(5, 32))


def test_prepare_history_newest_distinct():
    assert prepare_history([5, 1, 5, 2, 3, 1], 10).tolist() == [5, 2, 3, 1]
    assert prepare_history([5, 1, 5, 2, 3, 1], 2).tolist() == [3, 1]
    long = np.arange(500)
    assert prepare_history(long, 200).tolist() == list(range(300, 500))


# ---------------------------------------------------------------------------- L-hat


def test_balanced_loss_hand_value_log2_and_duplicates():
    pos = torch.tensor([[1.0, -2.0]])
    neg = torch.tensor([[0.5, 0.0, 3.0]])
    t = torch.ones_like(pos, dtype=torch.bool)
    u = torch.ones_like(neg, dtype=torch.bool)

    def ls(v):
        return math.log(1 / (1 + math.exp(-v)))

    hand = -((ls(1.0) + ls(-2.0)) / 4 + (ls(-0.5) + ls(0.0) + ls(-3.0)) / 6)
    assert float(balanced_logistic(pos, t, neg, u)) == pytest.approx(hand, rel=1e-6)
    z = torch.zeros(3, 10)
    m = torch.ones(3, 10, dtype=torch.bool)
    assert float(balanced_logistic(z, m, z, m)) == pytest.approx(math.log(2), rel=1e-6)  # r = 0.5
    dup = balanced_logistic(pos.repeat(1, 3), t.repeat(1, 3), neg.repeat(1, 2), u.repeat(1, 2))
    assert float(dup) == pytest.approx(hand, rel=1e-6)
    padded = balanced_logistic(torch.tensor([[1.0, -2.0, 99.0]]), torch.tensor([[True, True, False]]), neg, u)
    assert float(padded) == pytest.approx(hand, rel=1e-6)


def test_balanced_loss_finite_grads_at_extreme_logits():
    pos = torch.tensor([[50.0, -50.0]], requires_grad=True)
    neg = torch.tensor([[50.0, -50.0]], requires_grad=True)
    m = torch.ones(1, 2, dtype=torch.bool)
    loss = balanced_logistic(pos, m, neg, m)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    assert float(loss.detach()) == pytest.approx((50 + 50) / 4, rel=1e-3)


# ---------------------------------------------------------------------------- negatives


@pytest.mark.parametrize("cls", [PopularitySampler, AliasSampler])
def test_sample_excluding_never_hits_s_u(cls):
    counts = np.array([1000, 500, 200, 100, 50, 10, 5, 1], dtype=np.float64)
    s = cls(counts, 0.75, store_size=10_000, generator=torch.Generator().manual_seed(0))
    excl = [np.array([0, 1]), np.array([], dtype=np.int64), np.array([0, 2, 3, 4])]
    out = sample_excluding(s, 500, excl)
    assert out.shape == (3, 500)
    for r, ex in enumerate(excl):
        assert not np.isin(out[r].numpy(), ex).any()
    assert (out[1] == 0).any()  # the unrestricted row still draws the popular item
    with pytest.raises(ValueError, match="row 0.*all the sampling mass"):
        sample_excluding(s, 5, [np.arange(8)])
    point = cls(np.array([0.0, 7.0, 0.0]), 1.0, store_size=100)
    with pytest.raises(ValueError, match="all the sampling mass"):
        sample_excluding(point, 5, [np.array([1])])


# ---------------------------------------------------------------------------- protocol


def _cases():
    inp_off, inp = np.array([0, 3, 5, 6]), np.array([1, 2, 3, 4, 5, 6])
    tgt_off, tgt = np.array([0, 2, 4, 5]), np.array([7, 2, 8, 9, 6])
    return history_cases(inp_off, inp, tgt_off, tgt, 200)


def test_history_cases_drop_repeats_and_count():
    c = _cases()
    # user 0: target 2 repeats its history; user 2: its only target repeats -> no positive
    assert [p.tolist() for p in c.positives] == [[7], [8, 9]]
    assert c.counts["repeat_targets"] == 2 and c.counts["users_without_positive"] == 1
    known = np.ones(12, dtype=bool)
    known[[1, 2, 3]] = False  # user 0's whole history has no vector
    k = history_cases(np.array([0, 3, 5, 6]), np.array([1, 2, 3, 4, 5, 6]), np.array([0, 2, 4, 5]),
                      np.array([7, 2, 8, 9, 6]), 200, known)
    assert k.counts["unknown_items"] == 3 and k.counts["empty_histories"] == 1


def test_candidates_exclude_positives_and_history_and_metrics_by_hand():
    c = _cases()
    pop = np.arange(1, 13, dtype=np.float64)
    cs = draw_candidates(c, pop, 1.0, 4, seed=3)
    again = draw_candidates(c, pop, 1.0, 4, seed=3)
    assert np.array_equal(cs.candidates, again.candidates)  # one draw per (gamma, n, seed)
    for t in range(2):
        neg = cs.candidates[t, cs.width_pos:]
        assert not np.isin(neg, np.concatenate([c.positives[t], c.histories[t]])).any()

    def score(histories, cand):  # positives score by hand: case 0 rank 0; case 1 ranks 1 and 4
        s = np.zeros(cand.shape)
        s[0, 0] = 9.0
        s[1, :2] = [0.5, -1.0]
        s[1, 2:] = [1.0, 0.0, -0.5, -0.7]
        return np.where(cand >= 0, s, -np.inf)

    res = evaluate_candidate_set(score, cs, ks=(1, 2))
    # case 0: one positive at rank 0 -> NDCG 1; case 1: ranks 1 (one negative above) and 5
    # (all four negatives and the other positive above)
    idcg = 1 + 1 / math.log2(3)
    nd1 = (1 / math.log2(3) + 1 / math.log2(7)) / idcg
    assert res["ndcg"] == pytest.approx((1 + nd1) / 2)
    assert res["recall@1"] == pytest.approx((1 + 0) / 2)
    assert res["recall@2"] == pytest.approx((1 + 0.5) / 2)
    assert res["counts"]["repeat_targets"] == 2 and res["n"] == 2


# ---------------------------------------------------------------------------- golden smoke


def test_golden_smoke_attention_beats_popularity(tmp_path):
    from rayrec.models import baselines as bl
    from rayrec.models.attention_cf import score_candidates
    from rayrec.platform.checkpoint import load_model
    from rayrec.platform.config import load_config
    from rayrec.platform.embeddings import load_embeddings
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.families import distinct_user_counts, user_sequences
    from rayrec.platform.training.trainer import fit
    from tests.planted import cluster_of, planted_dataset, train_item2vec

    data = planted_dataset(tmp_path / "ds")
    _, run, _ = train_item2vec(tmp_path, data)
    job = load_config(TrainJobConfig, None, [
        "model.name=attention_cf", "model.dim=16", "model.hops=2", "model.hidden=16", "model.negatives=20", "optim.lr=0.01",
        f"data.path={data}", f"data.embeddings={run}@current", "ray.use_ray=false", "train.epochs=15",
        f"run.storage_path={tmp_path / 'runs'}", "run.name=att"])
    assert job.optim.clip_norm == 10.0 and job.train.batch_size == 64 and job.optim.name == "adam"
    res = fit(job, log=lambda _m: None)
    hist = res.history
    assert hist[-1]["loss"] < 0.9 * hist[0]["loss"]
    assert hist[-1]["valid_loss"] < hist[0]["valid_loss"]
    model = load_model(res.checkpoint_dir, kind="history").model
    emb = load_embeddings(f"{run}@current", data)
    assert torch.equal(model.item_vectors, torch.from_numpy(emb.x))  # frozen
    train, _ = user_sequences(data, ["train"])
    pop = distinct_user_counts(train, len(emb.item_ids))
    inp, users = user_sequences(data, ["test_input"])
    tgt, _ = user_sequences(data, ["test_target"])
    cases = history_cases(inp.offsets, inp.items, tgt.offsets, tgt.items, 200, emb.pair_counts > 0, users)
    cs = draw_candidates(cases, pop, 1.0, 50, seed=0)
    att = evaluate_candidate_set(lambda h, c: score_candidates(model, h, c), cs)
    popr = evaluate_candidate_set(bl.popularity_scores(pop), cs)
    last = evaluate_candidate_set(bl.last_item_scores(emb.x), cs)
    cl = np.array([cluster_of(i) for i in emb.item_ids])

    def oracle(histories, cand):  # the history's cluster first, by popularity inside it
        own = np.array([np.bincount(cl[h]).argmax() for h in histories])
        s = (cl[cand.clip(0)] == own[:, None]) * 1e6 + pop[cand.clip(0)]
        return np.where(cand >= 0, s, -np.inf)

    orc = evaluate_candidate_set(oracle, cs)
    assert att["ndcg"] > popr["ndcg"] + 0.1
    assert att["ndcg"] >= orc["ndcg"] - 0.05  # within 0.05 NDCG of the cluster oracle
    assert att["recall@10"] > popr["recall@10"]
    assert last["ndcg"] > popr["ndcg"]  # the embeddings carry the clusters
    # the checkpoint round-trips: same scores from the loaded model as from a rebuilt one
    again = load_model(res.checkpoint_dir, kind="history").model
    h = pad_rows(cases.histories[:4])
    q = torch.as_tensor(cs.candidates[:4].clip(0))
    assert torch.equal(model(h, q), again(h, q))


def test_clip_norm_scales_the_global_gradient():
    from pydantic import ValidationError

    from rayrec.platform.training.optim import OptimConfig, clip_grad_norm

    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(2, 2, requires_grad=True)
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    assert clip_grad_norm([a, b], 10.0) == pytest.approx(5.0)
    assert float(a.grad[0]) == 3.0  # under the limit: unchanged
    assert clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    total = math.sqrt(float(a.grad.pow(2).sum() + b.grad.pow(2).sum()))
    assert total == pytest.approx(1.0, rel=1e-4)
    assert float(a.grad[0]) / float(b.grad[0, 1]) == pytest.approx(3 / 4)  # the direction is kept
    e = torch.zeros(4, 2, requires_grad=True)  # a row-sparse gradient: rows summed before the norm
    e.grad = torch.sparse_coo_tensor(torch.tensor([[1, 1]]), torch.tensor([[3.0, 0.0], [0.0, 4.0]]), (4, 2),
                                     check_invariants=True)
    assert clip_grad_norm([e], 1.0) == pytest.approx(5.0)
    assert torch.allclose(e.grad.to_dense()[1], torch.tensor([0.6, 0.8]), atol=1e-5)
    assert OptimConfig().clip_norm is None  # other models' training is unchanged
    with pytest.raises(ValidationError, match="clip_norm"):
        OptimConfig(clip_norm=0)


def test_evaluate_cli_runs_the_sampled_protocol(tmp_path):
    """As a process (``python -m``), ``protocol: sampled_candidates`` reaches the data (a
    missing path is a clean one-line error, not a traceback)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "rayrec.jobs.evaluate", "protocol=sampled_candidates",
                          f"data.path={tmp_path / 'missing'}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "rayrec.jobs.evaluate: error:" in out.stderr and "manifest.json" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr

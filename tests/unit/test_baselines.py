"""Unit tests for rayrec.models.baselines: hand-computed tiny cases and the seed-003 numbers on
the rsc15-100k sample."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from rayrec.models import baselines as B
from rayrec.platform.evaluation.protocols import SessionScorer, evaluate_next_item


def csr(sessions: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = [len(s) for s in sessions]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.array([i for s in sessions for i in s], dtype=np.int64)
    return offsets, items


def run_session(scorer, session: list[int]) -> torch.Tensor:
    """Feed one session; return the scores after its last event, (N,)."""
    state = scorer.init_state(1)
    for t, item in enumerate(session):
        scores, state = scorer.step(state, torch.tensor([item]), torch.tensor([t == 0]))
    return scores[0]


def ranks_of(scores: torch.Tensor) -> list[int]:
    """Conservative rank of every item under one score vector."""
    return [int((scores >= scores[i]).sum()) for i in range(scores.numel())]


TRAIN = [[0, 1], [1, 2], [1], [2, 2, 0]]  # item counts: 0:2, 1:3, 2:3, 3:0


# ------------------------------------------------------------------ POP / recent POP


def test_pop_hand_computed():
    off, it = csr(TRAIN)
    scorer = B.fit(B.PopConfig(), off, it, n_items=4)
    assert isinstance(scorer, SessionScorer)
    scores = run_session(scorer, [3, 0])
    assert scores.tolist() == [2.0, 3.0, 3.0, 0.0]
    assert ranks_of(scores) == [3, 2, 2, 4]  # items 1 and 2 tie -> both rank 2


def test_recent_pop_window():
    off, it = csr(TRAIN)
    day = 86400.0
    # events of the last session (items 2, 2, 0) fall in the last day; the rest 3 days earlier
    ts = np.array([0, 1, 2, 3, 4, 3 * day, 3 * day + 1, 3 * day + 2], dtype=np.float64)
    scorer = B.fit(B.RecentPopConfig(window_days=1.0), off, it, 4, train_ts=ts)
    scores = run_session(scorer, [1])
    # recent counts 2:2, 0:1; then all-time popularity 1:3 > 3:0 breaks the zero ties
    assert ranks_of(scores) == [2, 3, 1, 4]
    with pytest.raises(ValueError, match="train_ts"):
        B.fit(B.RecentPopConfig(), off, it, 4)


# ------------------------------------------------------------------ S-POP


def test_spop_session_counts_then_global_popularity():
    off, it = csr(TRAIN)
    scorer = B.fit(B.SPopConfig(), off, it, n_items=4)
    # session [3, 0, 3]: counts 3:2, 0:1 -> 3 first, 0 second, then global pop (1 and 2 tie)
    assert ranks_of(run_session(scorer, [3, 0, 3])) == [2, 4, 4, 1]
    # session [3, 0]: counts tie at 1 -> global pop 0:2 beats 3:0
    assert ranks_of(run_session(scorer, [3, 0])) == [1, 4, 4, 2]


def test_spop_resets_between_sessions_in_a_batch():
    off, it = csr(TRAIN)
    scorer = B.fit(B.SPopConfig(), off, it, n_items=4)
    state = scorer.init_state(2)
    _, state = scorer.step(state, torch.tensor([3, 3]), torch.tensor([True, True]))
    scores, state = scorer.step(state, torch.tensor([3, 0]), torch.tensor([False, True]))
    assert int(scores[0].argmax()) == 3 and scores[0, 3] >= 2.0  # row 0 kept its history
    assert scores[1, 3] < 1.0  # row 1 forgot item 3
    kept = scorer.select(state, torch.tensor([1]))
    assert kept.shape == (1, 4) and kept[0, 0] == 1.0


# ------------------------------------------------------------------ Item-KNN


def test_item_knn_similarity_formula():
    # sessions {0,1}, {0,1,2}, {1,2}, {2,2,0}: supp (sessions) = [3, 3, 3];
    # cooc(0,1) = 2, cooc(0,2) = 2 (the repeated 2 counts once), cooc(1,2) = 2
    sessions = [[0, 1], [0, 1, 2], [1, 2], [2, 2, 0], [3]]
    off, it = csr(sessions)
    lam = 1.0
    scorer = B.fit(B.ItemKNNConfig(lambda_=lam), off, it, n_items=4)
    s0 = run_session(scorer, [0])
    expect = 2 / (math.sqrt(3 * 3) + lam)
    assert s0.tolist() == pytest.approx([0.0, expect, expect, 0.0])
    # only the current (last) item matters
    assert torch.equal(run_session(scorer, [2, 1, 0]), s0)

    sessions = [[0, 1], [0, 1], [0, 2], [1]]  # supp 0:3, 1:3, 2:1; cooc(0,1)=2, cooc(0,2)=1
    off, it = csr(sessions)
    scorer = B.fit(B.ItemKNNConfig(lambda_=2.0), off, it, n_items=3)
    s0 = run_session(scorer, [0])
    assert s0[1].item() == pytest.approx(2 / (3 + 2))
    assert s0[2].item() == pytest.approx(1 / (math.sqrt(3) + 2))
    assert s0[0].item() == 0.0  # no self-similarity
    # lambda 0 is the plain cosine; lambda 2 shrinks the rarely seen item 2 more than item 1
    plain = run_session(B.fit(B.ItemKNNConfig(lambda_=0.0), off, it, n_items=3), [0])
    assert plain[2].item() == pytest.approx(1 / math.sqrt(3))
    assert (s0[2] / s0[1]).item() < (plain[2] / plain[1]).item()


def test_item_knn_top_m_neighbours():
    rng = np.random.default_rng(0)
    sessions = [list(rng.integers(0, 12, size=rng.integers(1, 6))) for _ in range(80)]
    off, it = csr(sessions)
    full = B.fit(B.ItemKNNConfig(), off, it, n_items=12)
    top3 = B.fit_item_knn(B.ItemKNNConfig(n_neighbors=3), off, it, n_items=12, chunk_size=5)
    assert top3.dense is None
    for i in range(12):
        f, t = run_session(full, [i]), run_session(top3, [i])
        assert int((t > 0).sum()) <= 3
        best = torch.topk(f, 3).values
        assert torch.allclose(torch.sort(t[t > 0], descending=True).values, best[best > 0])


# ------------------------------------------------------------------ BPR-MF


def test_bpr_scorer_averages_session_factors():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    scorer = B.BPRMFScorer(q, torch.tensor([0.0, 0.0, 0.1]))
    scores = run_session(scorer, [0, 1])  # user = mean(q0, q1) = [0.5, 0.5]
    assert scores.tolist() == pytest.approx([0.5, 0.5, 1.1])


def test_bpr_mf_learns_co_occurrence_and_is_seeded():
    sessions = [[0, 1], [1, 0], [2, 3], [3, 2]] * 30
    off, it = csr(sessions)
    cfg = B.BPRMFConfig(n_factors=8, epochs=8, lr=0.05, batch_size=64, seed=3)
    scorer = B.fit(cfg, off, it, n_items=4)
    s = run_session(scorer, [0])
    assert s[1] > s[2] and s[1] > s[3]
    s = run_session(scorer, [3])
    assert s[2] > s[0] and s[2] > s[1]
    again = B.fit(cfg, off, it, n_items=4)
    assert torch.equal(again.item_factors, scorer.item_factors)


# ------------------------------------------------------------------ configs, dispatch, registry


def test_configs_are_strict_and_frozen():
    with pytest.raises(pydantic.ValidationError):
        B.ItemKNNConfig(lambda_=-1.0)
    with pytest.raises(pydantic.ValidationError):
        B.PopConfig(window_days=3)
    cfg = B.ItemKNNConfig()
    assert cfg.lambda_ == 20.0 and cfg.name == "item_knn"
    with pytest.raises(pydantic.ValidationError):
        cfg.lambda_ = 1.0


def test_fit_rejects_bad_input():
    off, it = csr(TRAIN)
    with pytest.raises(TypeError, match="baseline config"):
        B.fit(object(), off, it, 4)
    with pytest.raises(ValueError, match="out of range"):
        B.fit(B.PopConfig(), off, it, n_items=2)
    with pytest.raises(ValueError, match="train_offsets"):
        B.fit(B.PopConfig(), off[:-1], it, n_items=4)


def test_baselines_are_registered():
    from rayrec.models import registry

    for name, cls in [
        ("pop", B.PopConfig),
        ("spop", B.SPopConfig),
        ("item_knn", B.ItemKNNConfig),
        ("bpr_mf", B.BPRMFConfig),
        ("recent_pop", B.RecentPopConfig),
    ]:
        entry = registry.MODELS[name]
        assert entry.config_cls is cls and entry.kind == "baseline"


# ------------------------------------------------------------------ seed 003 on rsc15-100k

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "rsc15-100k"


def _load_rsc15():
    pd = pytest.importorskip("pandas")
    train_f = DATA / "yoochoose-clicks-100k_train_full.txt"
    test_f = DATA / "yoochoose-clicks-100k_test.txt"
    if not (train_f.exists() and test_f.exists()):
        pytest.skip(f"rsc15-100k data not found under {DATA}")

    def read(path):
        df = pd.read_csv(path, sep="\t", dtype={"SessionId": np.int64, "ItemId": np.int64})
        first = df.groupby("SessionId")["Time"].transform("min")
        # sessions by their first timestamp, events within a session by time (stable)
        return df.assign(_first=first).sort_values(["_first", "SessionId", "Time"], kind="stable")

    train, test = read(train_f), read(test_f)
    ids = np.sort(train["ItemId"].unique())

    def to_csr(df):
        idx = np.searchsorted(ids, df["ItemId"].to_numpy())
        assert (ids[np.minimum(idx, ids.size - 1)] == df["ItemId"].to_numpy()).all()
        sizes = df.groupby("SessionId", sort=False).size().to_numpy()
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), idx.astype(np.int64)

    return to_csr(train), to_csr(test), ids.size


@pytest.mark.data
def test_seed003_baselines_on_rsc15_100k():
    (tr_off, tr_it), (te_off, te_it), n_items = _load_rsc15()
    assert n_items == 2933 and tr_it.size == 70278 and te_it.size == 13568
    expected = {
        "pop": (B.PopConfig(), 0.089, None),
        "spop": (B.SPopConfig(), 0.381, 0.265),
        "item_knn": (B.ItemKNNConfig(lambda_=20.0), 0.406, 0.187),
    }
    for name, (cfg, recall, mrr) in expected.items():
        scorer = B.fit(cfg, tr_off, tr_it, n_items)
        r = evaluate_next_item(scorer, te_off, te_it, cutoffs=(20,))
        assert r["n"] == te_it.size - (te_off.size - 1)  # every (prefix, next) pair
        assert r["recall@20"] == pytest.approx(recall, abs=0.01), name
        if mrr is not None:
            assert r["mrr@20"] == pytest.approx(mrr, abs=0.01), name

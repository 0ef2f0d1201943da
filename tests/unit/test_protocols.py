"""Unit tests for rayrec.platform.evaluation.protocols on tiny hand-made examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayrec.platform.evaluation.metrics import RankAccumulator
from rayrec.platform.evaluation.protocols import (
    SessionScorer,
    evaluate_future_window,
    evaluate_next_item,
    evaluate_sampled_candidates,
)


class TableScorer:
    """Stateless: scores of the next item = a fixed row per current item."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.n_items = table.shape[0]

    def init_state(self, batch_size: int) -> int:
        return batch_size

    def step(self, state, items, reset):
        return self.table[items], state

    def select(self, state, rows):
        return rows.numel()


class PrefixScorer:
    """Stateful: score_i = 3 * (count of i in the session so far) + weight_i.

    Its scores depend on the whole prefix, so a missed reset or a wrong ``select`` changes the
    ranks.  It also records every (items, reset) call for inspection."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.n_items = weight.shape[0]
        self.calls: list[tuple[list[int], list[bool]]] = []

    def init_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, self.n_items)

    def step(self, state, items, reset):
        self.calls.append((items.tolist(), reset.tolist()))
        state = state.clone()
        state[reset] = 0.0
        state[torch.arange(items.numel()), items] += 1.0
        return 3.0 * state + self.weight, state

    def select(self, state, rows):
        return state[rows]


def reference_ranks(score_prefix, offsets, items):
    """Sequential, obviously-correct next-item ranks: one session at a time."""
    ranks = []
    for s in range(len(offsets) - 1):
        sess = items[offsets[s] : offsets[s + 1]]
        for t in range(len(sess) - 1):
            scores = score_prefix(sess[: t + 1])  # (N,)
            target = sess[t + 1]
            ranks.append(
                1 + sum(1 for j, v in enumerate(scores) if j != target and v >= scores[target])
            )
    return ranks


def _random_sessions(rng, n_sessions, n_items, max_len=6):
    lengths = rng.integers(0, max_len + 1, size=n_sessions)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(0, n_items, size=int(offsets[-1])).astype(np.int64)
    return offsets, items


def test_scorers_satisfy_protocol():
    assert isinstance(TableScorer(torch.zeros(2, 2)), SessionScorer)
    assert isinstance(PrefixScorer(torch.zeros(2)), SessionScorer)


def test_next_item_hand_computed():
    # 3 items; after item i the table ranks (i+1) % 3 first, then i, then the other.
    table = torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]])
    offsets = np.array([0, 3, 4, 6], dtype=np.int64)  # sessions [0,1,2], [1], [2,2]
    items = np.array([0, 1, 2, 1, 2, 2], dtype=np.int64)
    r = evaluate_next_item(TableScorer(table), offsets, items, cutoffs=(1, 2), batch_size=2)
    # pairs: (0->1) rank 1, (1->2) rank 1, (2->2) rank 2; the length-1 session gives none
    assert r["protocol"] == "next_item"
    assert r["n"] == 3
    assert r["n_sessions"] == 2
    assert r["recall@1"] == pytest.approx(2 / 3)
    assert r["recall@2"] == pytest.approx(1.0)
    assert r["mrr@2"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_next_item_constant_scores_are_conservative():
    offsets = np.array([0, 2], dtype=np.int64)
    items = np.array([0, 1], dtype=np.int64)
    r = evaluate_next_item(TableScorer(torch.zeros(5, 5)), offsets, items, cutoffs=(4, 5))
    assert r["recall@4"] == 0.0  # all five items tie -> rank 5
    assert r["recall@5"] == 1.0


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 256])
def test_next_item_session_parallel_matches_sequential(batch_size):
    rng = np.random.default_rng(1)
    n_items = 6
    offsets, items = _random_sessions(rng, 25, n_items)
    weight = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2])

    def score_prefix(prefix):
        counts = np.bincount(prefix, minlength=n_items)
        return (3.0 * counts + weight.numpy()).tolist()

    expected = RankAccumulator((1, 3, 5))
    expected.add(reference_ranks(score_prefix, offsets, items))
    scorer = PrefixScorer(weight)
    got = evaluate_next_item(scorer, offsets, items, cutoffs=(1, 3, 5), batch_size=batch_size)
    want = expected.result()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert got["n"] == int(sum(max(0, n - 1) for n in np.diff(offsets)))
    # every session that gives pairs starts exactly once with reset=True
    n_resets = sum(sum(r) for _, r in scorer.calls)
    assert n_resets == int((np.diff(offsets) >= 2).sum())
    assert max(len(i) for i, _ in scorer.calls) == min(batch_size, got["n_sessions"])


def test_next_item_exclude_seen_makes_repeats_misses():
    table = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.5, 1.0]])
    offsets = np.array([0, 3], dtype=np.int64)
    items = np.array([0, 0, 1], dtype=np.int64)  # 0 -> 0 (repeat), 0 -> 1
    plain = evaluate_next_item(TableScorer(table), offsets, items, cutoffs=(1, 2))
    assert plain["mrr@2"] == pytest.approx((1 + 0.5) / 2)
    excl = evaluate_next_item(TableScorer(table), offsets, items, cutoffs=(1, 2), exclude_seen=True)
    # repeat target is masked to -inf -> rank 3; item 1 then ranks first (item 0 masked)
    assert excl["recall@2"] == pytest.approx(0.5)
    assert excl["mrr@2"] == pytest.approx(0.5)


def test_next_item_no_pairs_gives_nan():
    r = evaluate_next_item(TableScorer(torch.zeros(2, 2)), np.array([0, 1]), np.array([1]))
    assert r["n"] == 0 and math.isnan(r["recall@20"])


@pytest.mark.parametrize(
    "offsets, items, match",
    [
        (np.array([0, 3]), np.array([0, 1]), "end at len"),
        (np.array([1, 2]), np.array([0, 1]), "start at 0"),
        (np.array([0, 2, 1, 2]), np.array([0, 1]), "non-decreasing"),
        (np.array([0, 2]), np.array([0, 9]), "out of range"),
    ],
)
def test_next_item_bad_csr(offsets, items, match):
    with pytest.raises(ValueError, match=match):
        evaluate_next_item(TableScorer(torch.zeros(3, 3)), offsets, items)


def test_next_item_wrong_score_shape_raises():
    class Bad(TableScorer):
        def step(self, state, items, reset):
            return torch.zeros(items.numel(), 2), state

    with pytest.raises(ValueError, match="shape"):
        evaluate_next_item(Bad(torch.zeros(3, 3)), np.array([0, 2]), np.array([0, 1]))


# ------------------------------------------------------------------ future_window (seed 000)


def test_future_window_hand_computed():
    n_items = 5
    fixed = np.array([0.9, 0.8, 0.7, 0.6, 0.5])  # same ranking for everyone

    def topk_fn(users):
        return np.tile(fixed, (len(users), 1))

    inputs = [np.array([0]), np.array([1, 2]), np.array([], dtype=np.int64)]
    outputs = [np.array([2, 4]), np.array([0]), np.array([], dtype=np.int64)]
    r = evaluate_future_window(topk_fn, inputs, outputs, ks=(1, 2), n_items=n_items)
    # user 0: top = [1, 2, ...] (0 excluded); user 1: top = [0, 3, ...]; user 2 has no output
    assert r["protocol"] == "future_window"
    assert r["n_users"] == 2
    assert r["precision@1"] == pytest.approx((0 + 1) / 2)
    assert r["precision@2"] == pytest.approx((0.5 + 0.5) / 2)
    assert r["pcc@1"] == pytest.approx(1 / 5)  # {0}
    assert r["pcc@2"] == pytest.approx(2 / 5)  # {2, 0}
    assert r["coverage@2"] == pytest.approx(4 / 5)  # {1, 2} | {0, 3}


def test_future_window_bad_shapes():
    with pytest.raises(ValueError, match="expected"):
        evaluate_future_window(
            lambda u: np.zeros((len(u), 2)), [np.array([0])], [np.array([1])], (1,), n_items=3
        )
    with pytest.raises(ValueError, match="users"):
        evaluate_future_window(lambda u: None, [np.array([0])], [], (1,), n_items=3)


# ------------------------------------------------------------------ sampled_candidates (002)


def test_sampled_candidates_excludes_target_and_zero_popularity():
    seen: dict[str, np.ndarray] = {}

    def score_fn(cases, cand):
        seen["cand"] = cand
        return -cand.astype(np.float64)  # lower item index scores higher

    pop = np.array([5.0, 0.0, 3.0, 2.0, 1.0])
    targets = np.array([2, 0, 4, 3])
    r = evaluate_sampled_candidates(
        score_fn, targets, 20, pop, gamma=1.0, rng=np.random.default_rng(0), cutoffs=(1, 5)
    )
    cand = seen["cand"]
    assert cand.shape == (4, 21)
    assert (cand[:, 0] == targets).all()
    assert not (cand[:, 1:] == targets[:, None]).any()
    assert not (cand == 1).any()  # popularity 0 is never drawn with gamma > 0
    assert r["protocol"] == "sampled_candidates" and r["n"] == 4
    assert r["n_negatives"] == 20 and r["gamma"] == 1.0
    # target 0 is always strictly best -> rank 1; the others face item 0 (p >= 5/8 per draw)
    assert r["recall@1"] == pytest.approx(1 / 4)


def test_sampled_candidates_distribution_follows_gamma():
    pop = np.array([1.0, 1.0, 1.0, 97.0, 0.0])
    targets = np.zeros(2000, dtype=np.int64)
    seen = {}

    def score_fn(cases, cand):
        seen["cand"] = cand
        return np.zeros(cand.shape)

    evaluate_sampled_candidates(score_fn, targets, 5, pop, 1.0, np.random.default_rng(0))
    neg = seen["cand"][:, 1:].ravel()
    # excluding target 0, p(3) = 97 / 99
    assert (neg == 3).mean() == pytest.approx(97 / 99, abs=0.01)
    evaluate_sampled_candidates(score_fn, targets, 5, pop, 0.0, np.random.default_rng(0))
    neg = seen["cand"][:, 1:].ravel()
    # gamma 0 is uniform over the other four items (zero popularity included)
    assert (neg == 4).mean() == pytest.approx(0.25, abs=0.02)


def test_sampled_candidates_all_ties_rank_last():
    r = evaluate_sampled_candidates(
        lambda c, cand: torch.zeros(cand.shape),
        np.array([0, 1]),
        3,
        np.ones(4),
        1.0,
        np.random.default_rng(0),
        cutoffs=(3, 4),
    )
    assert r["recall@3"] == 0.0 and r["recall@4"] == 1.0


def test_sampled_candidates_bad_input():
    with pytest.raises(ValueError, match="all the"):
        evaluate_sampled_candidates(
            lambda c, x: np.zeros(x.shape),
            np.array([0]),
            2,
            np.array([1.0, 0.0]),
            1.0,
            np.random.default_rng(0),
        )
    with pytest.raises(ValueError, match="n_negatives"):
        evaluate_sampled_candidates(
            lambda c, x: x, np.array([0]), 0, np.ones(3), 1.0, np.random.default_rng(0)
        )


# ---- candidate mask, mean ties, perplexity (seed 001: cold-start evaluation, Tables 1 and 7)


def test_next_item_mean_ties_take_the_mean_position():
    offsets = np.array([0, 2], dtype=np.int64)
    items = np.array([0, 1], dtype=np.int64)
    table = torch.zeros(5, 5)
    table[0, 4] = 1.0  # after item 0: item 4 first, then items 0-3 tied (the target 1 among them)
    cons = evaluate_next_item(TableScorer(table), offsets, items, cutoffs=(5,))
    mean = evaluate_next_item(TableScorer(table), offsets, items, cutoffs=(5,), ties="mean")
    assert cons["mrr@5"] == pytest.approx(1 / 5)  # 1 + 1 above + 3 ties against it
    assert mean["mrr@5"] == pytest.approx(1 / 3.5)  # 1 + 1 above + 3 ties / 2
    assert mean["ties"] == "mean" and "ties" not in cons
    with pytest.raises(ValueError, match="ties must be"):
        evaluate_next_item(TableScorer(table), offsets, items, ties="optimistic")


def test_next_item_candidate_mask_ranks_among_candidates_and_counts_the_rest():
    # sessions [0, 1, 2]: pairs 0 -> 1 and 1 -> 2; item 3 always scores highest
    table = torch.tensor([[0.0, 1.0, 0.5, 2.0]] * 4)
    offsets = np.array([0, 3], dtype=np.int64)
    items = np.array([0, 1, 2], dtype=np.int64)
    full = evaluate_next_item(TableScorer(table), offsets, items, cutoffs=(1, 2))
    cold = np.array([False, True, False, False])  # only item 1 is a candidate
    got = evaluate_next_item(TableScorer(table), offsets, items, cutoffs=(1, 2), candidates=cold)
    assert full["n"] == 2 and full["recall@1"] == 0.0  # item 3 is first everywhere
    assert got["n"] == 1 and got["recall@1"] == 1.0  # 0 -> 1 ranked among {1}: first
    assert got["n_skipped_targets"] == 1 and got["n_candidates"] == 1
    with pytest.raises(ValueError, match="candidates must be"):
        evaluate_next_item(TableScorer(table), offsets, items, candidates=np.ones(3, bool))


def test_next_item_perplexity_is_exp_mean_nll_of_the_softmax():
    torch.manual_seed(0)
    table = torch.randn(4, 4)
    offsets = np.array([0, 3], dtype=np.int64)
    items = np.array([0, 1, 2], dtype=np.int64)
    r = evaluate_next_item(TableScorer(table), offsets, items, ppl=True)
    lp = torch.log_softmax(table.double(), 1)
    assert r["ppl"] == pytest.approx(math.exp(-(lp[0, 1] + lp[1, 2]).item() / 2))
    uniform = evaluate_next_item(TableScorer(torch.zeros(4, 4)), offsets, items, ppl=True)
    assert uniform["ppl"] == pytest.approx(4.0)  # a uniform model's perplexity is N
    assert "ppl" not in evaluate_next_item(TableScorer(table), offsets, items)

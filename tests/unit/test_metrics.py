"""Unit tests for rayrec.platform.evaluation.metrics (hand-computed values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayrec.platform.evaluation.metrics import (
    RankAccumulator,
    catalog_coverage,
    pcc_at_k,
    perplexity,
    precision_at_k,
    ranks_conservative,
)

# ------------------------------------------------------------------ ranks_conservative


def test_ranks_hand_computed_with_ties():
    scores = torch.tensor(
        [
            [0.1, 0.5, 0.5, 0.2],  # target 1 ties with item 2 -> rank 2
            [1.0, 1.0, 1.0, 1.0],  # all equal -> worst rank 4
            [0.9, 0.1, 0.2, 0.3],  # target 0 strictly best -> rank 1
            [0.9, 0.1, 0.2, 0.3],  # target 1 strictly worst -> rank 4
        ]
    )
    ranks = ranks_conservative(scores, torch.tensor([1, 0, 0, 1]))
    assert ranks.dtype == torch.long
    assert ranks.tolist() == [2, 4, 1, 4]


def test_ranks_match_brute_force_definition():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (50, 12), generator=gen).float()  # many exact ties
    targets = torch.randint(0, 12, (50,), generator=gen)
    ranks = ranks_conservative(scores, targets)
    for b in range(50):
        t = int(targets[b])
        expected = 1 + sum(1 for j in range(12) if j != t and scores[b, j] >= scores[b, t])
        assert int(ranks[b]) == expected


def test_ranks_handle_infinite_scores():
    scores = torch.tensor([[float("-inf"), 0.0, float("-inf")]])
    assert ranks_conservative(scores, torch.tensor([0])).tolist() == [3]
    assert ranks_conservative(scores, torch.tensor([1])).tolist() == [1]


def test_ranks_nan_raises():
    scores = torch.tensor([[0.1, float("nan"), 0.3]])
    with pytest.raises(ValueError, match="NaN"):
        ranks_conservative(scores, torch.tensor([0]))


@pytest.mark.parametrize(
    "scores, targets, match",
    [
        (torch.zeros(3), torch.tensor([0]), "2-D"),
        (torch.zeros(2, 3), torch.tensor([0]), "targets"),
        (torch.zeros(2, 3), torch.tensor([0, 3]), "out of range"),
        (torch.zeros(2, 3), torch.tensor([-1, 0]), "out of range"),
    ],
)
def test_ranks_bad_input(scores, targets, match):
    with pytest.raises(ValueError, match=match):
        ranks_conservative(scores, targets)


# ------------------------------------------------------------------ RankAccumulator


def test_accumulator_hand_computed():
    acc = RankAccumulator(cutoffs=(5, 20))
    acc.add(torch.tensor([1, 3]))
    acc.add(np.array([25]))
    r = acc.result()
    assert r["n"] == 3
    assert r["recall@5"] == pytest.approx(2 / 3)
    assert r["hit@5"] == r["recall@5"]
    assert r["mrr@5"] == pytest.approx((1 + 1 / 3) / 3)
    # 1/log2(2) = 1, 1/log2(4) = 0.5
    assert r["ndcg@5"] == pytest.approx((1 + 0.5) / 3)
    assert r["recall@20"] == pytest.approx(2 / 3)
    acc.add([20])
    r = acc.result()
    assert r["recall@5"] == pytest.approx(2 / 4)
    assert r["recall@20"] == pytest.approx(3 / 4)
    assert r["mrr@20"] == pytest.approx((1 + 1 / 3 + 1 / 20) / 4)
    assert r["ndcg@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(21)) / 4)


def test_accumulator_empty_is_nan():
    r = RankAccumulator().result()
    assert r["n"] == 0
    assert set(r) == {f"{m}@{k}" for m in ("recall", "mrr", "ndcg", "hit") for k in (5, 10, 20)} | {
        "n"
    }
    assert all(math.isnan(v) for key, v in r.items() if key != "n")


def test_accumulator_rejects_bad_ranks_and_cutoffs():
    acc = RankAccumulator()
    with pytest.raises(ValueError, match="1-based"):
        acc.add(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="integers"):
        acc.add(np.array([1.5]))
    with pytest.raises(ValueError, match="cutoffs"):
        RankAccumulator(cutoffs=(0, 5))
    with pytest.raises(ValueError, match="cutoffs"):
        RankAccumulator(cutoffs=())


# ------------------------------------------------------------------ set metrics (seed 000)

REC = [np.array([1, 2, 3]), np.array([4, 5, 6]), np.array([1, 7, 8])]
REL = [{1, 3, 9}, np.array([7]), {1}]


def test_precision_at_k_eq1():
    # k=2: c0 {1,2}&{1,3,9} = 1 -> 1/2; c1 {4,5}&{7} = 0; c2 {1,7}&{1} = 1 -> 1/2
    assert precision_at_k(REC, REL, 2) == pytest.approx((0.5 + 0 + 0.5) / 3)
    # k=3: c0 {1,3} -> 2/3; c1 0; c2 1/3
    assert precision_at_k(REC, REL, 3) == pytest.approx((2 / 3 + 0 + 1 / 3) / 3)
    # a list shorter than k still divides by k (eq. 1)
    assert precision_at_k([np.array([5])], [{5}], 4) == pytest.approx(0.25)


def test_pcc_at_k_eq2_counts_each_product_once():
    # k=3: converted = {1,3} from c0 and {1} from c2 -> union {1,3}; P = 10
    assert pcc_at_k(REC, REL, 3, n_products=10) == pytest.approx(2 / 10)
    # k=1: c0 recommends 1 and bought it; c2 too -> still one product
    assert pcc_at_k(REC, REL, 1, n_products=10) == pytest.approx(1 / 10)
    # recommended but bought by a *different* customer does not count
    assert pcc_at_k([np.array([7]), np.array([4])], [{4}, {7}], 1, n_products=5) == 0.0


def test_catalog_coverage():
    # k=2: {1,2} | {4,5} | {1,7} = 5 distinct items of 10
    assert catalog_coverage(REC, 2, n_items=10) == pytest.approx(0.5)


def test_perplexity_hand_computed():
    assert perplexity(torch.log(torch.full((7,), 0.25))) == pytest.approx(4.0)
    # geometric mean of 1/p: sqrt(2 * 8) = 4
    assert perplexity(np.log([0.5, 0.125])) == pytest.approx(4.0)
    assert perplexity([0.0]) == pytest.approx(1.0)


def test_set_metric_bad_input():
    with pytest.raises(ValueError, match="customers"):
        precision_at_k(REC, REL[:2], 2)
    with pytest.raises(ValueError, match="k must"):
        precision_at_k(REC, REL, 0)
    with pytest.raises(ValueError, match="n_products"):
        pcc_at_k(REC, REL, 2, n_products=0)
    with pytest.raises(ValueError, match="<= 0"):
        perplexity([0.5])
    with pytest.raises(ValueError, match="at least one"):
        perplexity([])

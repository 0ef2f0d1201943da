"""GRU4Rec losses: hand-computed values, gradient signs, accidental-hit masking."""

from __future__ import annotations

import math

import pytest
import torch

from rayrec.models.losses import (
    LossConfig,
    bpr,
    bpr_max,
    compute_loss,
    cross_entropy,
    negative_mask,
    top1,
    top1_max,
)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# B = 2 rows, S = 1 extra sample -> (2, 3) score block; positives on the diagonal.
S = [[2.0, 0.5, -1.0], [1.0, 0.0, 0.3]]


def scores() -> torch.Tensor:
    return torch.tensor(S, dtype=torch.float64, requires_grad=True)


def _negs(i: int) -> list[float]:
    return [S[i][j] for j in range(3) if j != i]


def test_top1_value() -> None:
    want = 0.0
    for i in range(2):
        si = S[i][i]
        want += sum(sig(sj - si) + sig(sj * sj) for sj in _negs(i)) / 2
    assert top1(scores()).item() == pytest.approx(want / 2, rel=1e-12)


def test_bpr_value() -> None:
    want = 0.0
    for i in range(2):
        si = S[i][i]
        want += -sum(math.log(sig(si - sj)) for sj in _negs(i)) / 2
    assert bpr(scores()).item() == pytest.approx(want / 2, rel=1e-12)


def _softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_top1_max_value() -> None:
    want = 0.0
    for i in range(2):
        si, ng = S[i][i], _negs(i)
        w = _softmax(ng)
        want += sum(wj * (sig(sj - si) + sig(sj * sj)) for wj, sj in zip(w, ng))
    assert top1_max(scores()).item() == pytest.approx(want / 2, rel=1e-12)


def test_bpr_max_value() -> None:
    bpreg = 1.5
    want = 0.0
    for i in range(2):
        si, ng = S[i][i], _negs(i)
        w = _softmax(ng)
        want += -math.log(sum(wj * sig(si - sj) for wj, sj in zip(w, ng)))
        want += bpreg * sum(wj * sj * sj for wj, sj in zip(w, ng))
    assert bpr_max(scores(), bpreg=bpreg).item() == pytest.approx(want / 2, rel=1e-12)


def test_cross_entropy_value_with_logq() -> None:
    log_q = [math.log(0.5), math.log(0.2), math.log(0.3)]
    want = 0.0
    for i in range(2):
        z = [S[i][j] - 1.0 * log_q[j] for j in range(3)]
        want += -math.log(_softmax(z)[i])
    got = cross_entropy(scores(), log_q=torch.tensor(log_q, dtype=torch.float64), logq=1.0)
    assert got.item() == pytest.approx(want / 2, rel=1e-12)
    # logq = 0 is the plain sampled softmax
    plain = sum(-math.log(_softmax(S[i])[i]) for i in range(2)) / 2
    got0 = cross_entropy(scores(), log_q=torch.tensor(log_q, dtype=torch.float64), logq=0.0)
    assert got0.item() == pytest.approx(plain, rel=1e-12)


@pytest.mark.parametrize("name", ["top1", "bpr", "top1-max", "bpr-max", "cross-entropy"])
def test_gradient_signs(name: str) -> None:
    torch.manual_seed(0)
    b, s = 4, 6
    x = (torch.randn(b, b + s, dtype=torch.float64) * 0.5).requires_grad_(True)
    cfg = LossConfig(name=name, bpreg=1.0)
    log_q = torch.randn(b + s, dtype=torch.float64) if name == "cross-entropy" else None
    compute_loss(cfg, x, None, log_q).backward()
    g = x.grad
    diag = g.diagonal()
    assert torch.all(diag < 0), f"{name}: raising a target score must lower the loss: {diag}"
    off = g.clone()
    off[:, :b].fill_diagonal_(0.0)
    neg = off[~torch.eye(b, b + s, dtype=torch.bool)]
    if name in ("top1", "top1-max", "bpr-max"):
        # the s_j^2 regulariser pulls negatives towards 0 from either side, so only check
        # negatives at positive scores: raising them must raise the loss
        xs = x.detach()[~torch.eye(b, b + s, dtype=torch.bool)]
        neg = neg[xs > 0]
    assert neg.numel() > 0
    assert torch.all(neg > 0), f"{name}: raising a negative score must raise the loss"


def test_duplicate_targets_are_masked() -> None:
    # rows 0 and 1 have the same target item 7; extra sample 7 hits both as well
    targets = torch.tensor([7, 7, 3])
    cols = torch.cat([targets, torch.tensor([7, 5])])
    valid = negative_mask(targets, cols)
    assert valid.tolist() == [
        [False, False, True, False, True],
        [False, False, True, False, True],
        [True, True, False, True, True],
    ]
    keep_hits = negative_mask(targets, cols, mask_sample_hits=False)
    assert keep_hits[0, 3] and not keep_hits[0, 1]
    # a masked column has no influence on any loss
    x = torch.randn(3, 5, dtype=torch.float64)
    for name in ["top1", "bpr", "top1-max", "bpr-max", "cross-entropy"]:
        cfg = LossConfig(name=name)
        y = x.clone()
        y[0, 1] += 5.0  # a masked duplicate of row 0's target
        y[0, 3] -= 3.0  # a masked sample hit
        a = compute_loss(cfg, x, valid)
        c = compute_loss(cfg, y, valid)
        assert a.item() == pytest.approx(c.item(), rel=1e-12), name
        # ... while an unmasked negative does change it
        y[0, 2] += 1.0
        assert compute_loss(cfg, y, valid).item() != pytest.approx(a.item(), rel=1e-9), name


def test_bad_shapes_and_config() -> None:
    with pytest.raises(ValueError, match="B \\+ S"):
        top1(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="log_q"):
        cross_entropy(torch.zeros(2, 3), log_q=torch.zeros(4))
    with pytest.raises(ValueError, match="sample_alpha"):
        LossConfig(sample_alpha=1.5)
    with pytest.raises(ValueError, match="n_sample"):
        LossConfig(n_sample=-1)
    with pytest.raises(ValueError):
        LossConfig(name="hinge")

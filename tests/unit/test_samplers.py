"""PopularitySampler: distribution (chi-square), alpha = 0 uniform, reproducibility, store."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayrec.models.samplers import PopularitySampler, logq_tables

COUNTS = np.array([100, 50, 20, 10, 5, 1, 0, 30])


def _chi2_p(obs: np.ndarray, exp: np.ndarray) -> float:
    """Chi-square goodness-of-fit p-value (scipy when installed, else Wilson-Hilferty)."""
    try:
        from scipy.stats import chisquare
    except ModuleNotFoundError:
        stat = float(((obs - exp) ** 2 / exp).sum())
        k = len(obs) - 1  # degrees of freedom
        z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
        return 0.5 * math.erfc(z / math.sqrt(2))
    return float(chisquare(obs, exp).pvalue)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.75])
def test_matches_counts_pow_alpha(alpha: float) -> None:
    g = torch.Generator().manual_seed(1)
    s = PopularitySampler(COUNTS, alpha, store_size=50_000, generator=g)
    w = COUNTS.astype(float) ** alpha
    np.testing.assert_allclose(s.prob.numpy(), w / w.sum(), rtol=1e-12)
    draws = torch.cat([s.sample(1000) for _ in range(200)]).numpy()  # 200k, several refills
    assert s.refills >= 4
    obs = np.bincount(draws, minlength=len(COUNTS))
    assert obs[6] == 0  # zero count, alpha > 0: never drawn
    nz = COUNTS > 0
    exp = s.prob.numpy()[nz] * draws.size
    assert _chi2_p(obs[nz], exp) > 1e-3
    # a clearly wrong distribution is rejected by the same test
    wrong = COUNTS.astype(float)[nz] ** (alpha * 0.5)
    assert _chi2_p(obs[nz], wrong / wrong.sum() * draws.size) < 1e-6


def test_alpha_zero_is_uniform() -> None:
    g = torch.Generator().manual_seed(2)
    s = PopularitySampler(COUNTS, 0.0, store_size=100_000, generator=g)
    np.testing.assert_allclose(s.prob.numpy(), np.full(len(COUNTS), 1 / len(COUNTS)))
    obs = np.bincount(s.sample(80_000).numpy(), minlength=len(COUNTS))
    assert obs[6] > 0  # zero-count items are drawn when uniform
    assert _chi2_p(obs, np.full(len(COUNTS), 10_000.0)) > 1e-3


def test_reproducible_with_seeded_generator() -> None:
    a = PopularitySampler(COUNTS, 0.5, 1000, torch.Generator().manual_seed(7))
    b = PopularitySampler(COUNTS, 0.5, 1000, torch.Generator().manual_seed(7))
    c = PopularitySampler(COUNTS, 0.5, 1000, torch.Generator().manual_seed(8))
    xa = torch.cat([a.sample(300) for _ in range(10)])
    xb = torch.cat([b.sample(300) for _ in range(10)])
    xc = torch.cat([c.sample(300) for _ in range(10)])
    assert torch.equal(xa, xb)
    assert not torch.equal(xa, xc)
    assert xa.dtype == torch.long and int(xa.max()) < len(COUNTS)


def test_log_prob_and_bad_input() -> None:
    s = PopularitySampler(COUNTS, 1.0, 10)
    assert torch.isinf(s.log_prob[6]) and torch.isfinite(s.log_prob[0])
    assert s.sample(25).shape == (25,)  # larger than the store: refilled to fit
    with pytest.raises(ValueError, match="alpha"):
        PopularitySampler(COUNTS, 1.5)
    with pytest.raises(ValueError, match="counts"):
        PopularitySampler(np.array([1, -1]), 0.5)
    with pytest.raises(ValueError, match="sums to 0"):
        PopularitySampler(np.zeros(3), 0.5)


# ---------------------------------------------------------------- logQ tables (sampled softmax)
def test_logq_tables_expected_mode_is_log_expected_occurrences() -> None:
    """``expected``: both tables are log(B p_pop + S p_alpha); never-seen items count as 1."""
    b, n_s = 4, 6
    smp = PopularitySampler(COUNTS, 0.5, 100)
    t, e = logq_tables(COUNTS, b, smp, n_s)
    c = np.maximum(COUNTS, 1).astype(float)
    q = b * c / c.sum() + n_s * smp.prob.numpy()
    assert t.dtype == e.dtype == torch.float32 and t.shape == (len(COUNTS),)
    np.testing.assert_allclose(t.numpy(), np.log(q), rtol=1e-6)
    assert torch.equal(t, e) and bool(torch.isfinite(t).all())
    # without extra samples only the mini-batch targets are sampled columns
    t0, e0 = logq_tables(COUNTS, b, None, 0)
    np.testing.assert_allclose(t0.numpy(), np.log(b * c / c.sum()), rtol=1e-6)
    assert torch.equal(t0, e0)


def test_logq_tables_official_mode() -> None:
    """``official`` (the authors' code): log count for targets, alpha * log count for samples."""
    smp = PopularitySampler(COUNTS, 0.75, 100)
    t, e = logq_tables(COUNTS, 32, smp, 2048, mode="official")
    logc = np.log(np.maximum(COUNTS, 1).astype(float))
    np.testing.assert_allclose(t.numpy(), logc, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(e.numpy(), 0.75 * logc, rtol=1e-6, atol=1e-7)


def test_logq_corrected_partition_is_unbiased() -> None:
    """With columns = B targets ~ popularity + S extra samples ~ popularity^alpha,
    ``sum over columns of exp(s_j) / Q_j`` estimates the full ``sum_j exp(s_j)``."""
    counts = np.array([100, 50, 20, 10, 5, 1, 3, 30])  # no zero count: targets ~ p_pop exactly
    b, n_s, trials = 3, 5, 40_000
    smp = PopularitySampler(counts, 0.5, 50_000, torch.Generator().manual_seed(3))
    lq, _ = logq_tables(counts, b, smp, n_s)
    scores = np.random.default_rng(1).normal(size=len(counts))
    rng = np.random.default_rng(2)
    tgt = rng.choice(len(counts), size=(trials, b), p=counts / counts.sum())
    ext = torch.cat([smp.sample(n_s) for _ in range(trials)]).numpy().reshape(trials, n_s)
    cols = np.concatenate([tgt, ext], axis=1)  # (trials, B + S)
    est = np.exp(scores[cols] - lq.numpy()[cols]).sum(axis=1)  # (trials,)
    full = np.exp(scores).sum()
    assert abs(est.mean() - full) < 4 * est.std() / np.sqrt(trials), (est.mean(), full)
    # without the correction the estimate is far off (a wrong Q is detectable here)
    assert abs(np.exp(scores[cols]).sum(axis=1).mean() - full) > 20 * est.std() / np.sqrt(trials)


# ---- the alias method (loss.sampler: alias): same distribution, O(1) per draw ---------------

def test_alias_sampler_draws_the_popularity_distribution():
    from rayrec.models.samplers import AliasSampler

    counts = np.array([0, 1, 5, 0, 20, 3, 100, 7], dtype=np.int64)
    s = AliasSampler(counts, 0.5, store_size=400_000, generator=torch.Generator().manual_seed(3))
    draws = s.sample(400_000)
    freq = np.bincount(draws.numpy(), minlength=len(counts)) / draws.numel()
    expected = s.prob.numpy()
    assert freq[0] == 0.0 and freq[3] == 0.0  # zero count: never drawn (alpha > 0)
    # binomial standard error sqrt(p (1 - p) / n) <= 0.0008: 5 sigma
    np.testing.assert_allclose(freq, expected, atol=0.004)
    np.testing.assert_allclose(expected, np.sqrt(counts) / np.sqrt(counts).sum())


def test_alias_tables_hold_mass_one_over_n_per_slot():
    from rayrec.models.samplers import _alias_tables

    rng = np.random.default_rng(0)
    p = rng.random(1000) ** 4
    p[rng.integers(0, 1000, 50)] = 0.0
    p /= p.sum()
    accept, alias = _alias_tables(p)
    n = len(p)
    mass = accept / n  # each slot keeps accept/N for itself, gives (1 - accept)/N to its alias
    np.add.at(mass, alias, (1.0 - accept) / n)
    np.testing.assert_allclose(mass, p, atol=1e-12)


def test_loss_config_names_the_sampler():
    from rayrec.models.losses import LossConfig

    assert LossConfig(sampler="alias").sampler == "alias"
    with pytest.raises(ValueError, match="sampler"):
        LossConfig(sampler="walker")

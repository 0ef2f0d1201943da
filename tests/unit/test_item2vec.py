"""item2vec (seed 002 section 3): pair generation, subsampling, the SGNS loss, the engine
refusal, publishing versions, and a golden smoke on planted clusters (neighbour purity)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayrec.models.item2vec import (
    Item2Vec,
    Item2VecConfig,
    keep_probability,
    skipgram_pairs,
    subsample,
)
from rayrec.platform.config import load_config
from rayrec.platform.training.config import TrainJobConfig

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def _csr(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of the given lengths over globally distinct items (item = position)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, np.arange(offsets[-1], dtype=np.int64)


@SETTINGS
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=8), w=st.integers(1, 7))
def test_full_window_pair_count_no_cross_user_and_symmetric(lengths, w):
    offsets, items = _csr(lengths)
    p = skipgram_pairs(offsets, items, w, reduced_window=False)
    expected = sum(min(w, i) + min(w, L - 1 - i) for L in lengths for i in range(L))
    assert len(p) == expected
    assert p.same_item_dropped == 0
    user = np.repeat(np.arange(len(lengths)), lengths)  # item -> its user
    assert (user[p.centers] == user[p.contexts]).all()
    assert (np.abs(p.centers - p.contexts) <= w).all()  # distance inside the window
    fwd = Counter(zip(p.centers.tolist(), p.contexts.tolist()))
    assert fwd == Counter(zip(p.contexts.tolist(), p.centers.tolist()))


def test_same_item_pairs_dropped_and_counted():
    offsets = np.array([0, 4], dtype=np.int64)
    items = np.array([7, 7, 3, 7], dtype=np.int64)
    p = skipgram_pairs(offsets, items, 2, reduced_window=False)
    # windows of 2 over positions 0..3: 10 ordered pairs, of which (0,1),(1,0),(1,3),(3,1) are 7-7
    assert p.same_item_dropped == 4
    assert len(p) == 6 and not (p.centers == p.contexts).any()


@pytest.mark.parametrize("w", [1, 3, 5])
def test_reduced_window_mean(w):
    L, reps = 400, 20
    offsets, items = _csr([L])
    rng = np.random.default_rng(0)
    counts = [len(skipgram_pairs(offsets, items, w, rng, reduced_window=True)) for _ in range(reps)]
    # E = sum_i sum_d P(b_i >= d) ([i - d >= 0] + [i + d < L]),  P(b >= d) = (w - d + 1) / w
    exp = sum((w - d + 1) / w * ((i - d >= 0) + (i + d < L)) for i in range(L) for d in range(1, w + 1))
    var_centre = 4 * (w * w - 1) / 12  # an interior centre's 2 b, b uniform on 1..w
    sd = math.sqrt(var_centre * L / reps)
    assert abs(np.mean(counts) - exp) <= 3 * sd + 1e-9
    assert max(counts) <= sum(min(w, i) + min(w, L - 1 - i) for i in range(L))


def test_subsampling_keep_rate_and_rare_items_always_kept():
    counts = np.array([100_000, 10_000, 1_000, 10, 1], dtype=np.float64)
    t = 1e-3
    keep = keep_probability(counts, t)
    f = counts / counts.sum()
    assert np.allclose(keep[f > t], np.sqrt(t / f[f > t]))
    assert (keep[f <= t] == 1.0).all()
    assert (keep_probability(counts, 0.0) == 1.0).all()  # subsample: 0 = off
    rng = np.random.default_rng(1)
    items = np.repeat(np.arange(5), 4000)
    offsets = np.array([0, items.size], dtype=np.int64)
    _, kept = subsample(offsets, items, keep, rng)
    n_kept = np.bincount(kept, minlength=5)
    for i in range(5):
        mean, sd = 4000 * keep[i], math.sqrt(4000 * keep[i] * (1 - keep[i]))
        assert abs(n_kept[i] - mean) <= 3 * sd + 1e-9, i
    assert n_kept[3] == n_kept[4] == 4000  # f <= t: every event kept


def test_pairs_drawn_after_subsampling_stay_within_kept_events():
    offsets, items = _csr([50, 50])
    keep = np.where(np.arange(100) % 2 == 0, 1.0, 0.0)  # odd items always discarded
    p = skipgram_pairs(offsets, items, 2, np.random.default_rng(0), reduced_window=False, keep_prob=keep)
    assert p.kept_events == 50 and p.events == 100
    assert (p.centers % 2 == 0).all() and (p.contexts % 2 == 0).all()
    assert (np.abs(p.centers - p.contexts) <= 4).all()  # neighbours in the subsampled sequence


def test_sgns_loss_hand_value():
    cfg = Item2VecConfig(dim=2)
    m = Item2Vec(cfg, 3)
    with torch.no_grad():
        m.x.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        m.y.copy_(torch.tensor([[0.5, 0.0], [0.0, 2.0], [-1.0, 1.0]]))
    with torch.no_grad():
        loss = m(torch.tensor([0]), torch.tensor([1]), torch.tensor([[2, 0]]), torch.tensor([[True, True]]))
        masked = m(torch.tensor([0]), torch.tensor([1]), torch.tensor([[2, 0]]), torch.tensor([[True, False]]))
    # x0.y1 = 0, x0.y2 = -1, x0.y0 = 0.5
    hand = -(math.log(1 / (1 + math.exp(0))) + math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(0.5))))
    assert float(loss) == pytest.approx(hand, rel=1e-6)
    assert float(masked) == pytest.approx(-(F.logsigmoid(torch.tensor(0.0)) + F.logsigmoid(torch.tensor(1.0))).item())


def test_deepspeed_is_a_config_error_saying_why():
    with pytest.raises(ValueError, match=r"scaling.engine=deepspeed.*use scaling.engine=ddp"):
        load_config(TrainJobConfig, None, ["model.name=item2vec", "scaling.engine=deepspeed", "ray.use_ray=true"])
    job = load_config(TrainJobConfig, None, ["model.name=item2vec"])
    assert job.optim.name == "adam" and job.optim.sparse_item_rows is False  # dense gradients
    with pytest.raises(ValueError, match="_target"):
        from rayrec.platform.training.families import EmbeddingFamily

        EmbeddingFamily.splits(load_config(TrainJobConfig, None, ["model.name=item2vec",
                                                                   "data.splits=[train, test_target]"]))


# ---------------------------------------------------------------------------- publishing


def _publish_args(tmp_path, n=4, d=3, seed=0):
    from tests.planted import planted_dataset

    data = planted_dataset(tmp_path / "ds", n_users=60)
    from rayrec.platform.data import load_items

    ids = load_items(data)["item_id"].astype(str).tolist()
    rng = np.random.default_rng(seed)
    return data, ids, rng.normal(size=(len(ids), d)).astype(np.float32), rng.normal(size=(len(ids), d)).astype(np.float32)


def test_publish_versions_current_keep_and_refusals(tmp_path):
    from rayrec.platform.embeddings import EmbeddingError, load_embeddings, publish

    data, ids, x, y = _publish_args(tmp_path)
    run = tmp_path / "runs" / "i2v"
    pc = np.ones(len(ids), dtype=np.int64)
    v1 = publish(run, x, y, pc, ids, data, keep_versions=2)
    assert publish(run, x, y, pc, ids, data, keep_versions=2) == v1  # content hash
    e = load_embeddings(f"{run}@current", data)
    assert e.version == v1 and np.array_equal(e.x, x) and len(e.meta["data_manifest_digest"]) == 16
    v2 = publish(run, x + 1, y, pc, ids, data, keep_versions=2)
    v3 = publish(run, x + 2, y, pc, ids, data, keep_versions=2)
    assert len({v1, v2, v3}) == 3
    assert load_embeddings(str(run), data).version == v3  # no @: current
    assert load_embeddings(f"{run}@{v2}", data).version == v2
    with pytest.raises(EmbeddingError, match="version"):
        load_embeddings(f"{run}@{v1}", data)  # pruned: keep_versions=2
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(EmbeddingError, match="NaN/inf.*item_idx 3"):
        publish(run, bad, y, pc, ids, data)
    assert load_embeddings(f"{run}@current").version == v3  # the refused one never became current
    # another item index: the error names the version and the data's items.parquet
    other = publish(tmp_path / "runs" / "other", x[::-1].copy(), y, pc, ids[::-1], data)
    with pytest.raises(EmbeddingError, match=rf"embedding version {other}.*items.parquet"):
        load_embeddings(f"{tmp_path / 'runs' / 'other'}@current", data)


# ---------------------------------------------------------------------------- golden smoke


def test_golden_smoke_item2vec_neighbour_purity(tmp_path):
    from rayrec.platform.embeddings import load_embeddings
    from tests.planted import neighbour_purity, planted_dataset, train_item2vec

    data = planted_dataset(tmp_path / "ds")
    res, run, version = train_item2vec(tmp_path, data)
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < 0.9 * losses[0]
    assert res.history[0]["pairs"] > 0 and "same_item_pairs_dropped" in res.history[0]
    e = load_embeddings(f"{run}@current", data)
    assert e.version == version and (e.pair_counts > 0).all()
    assert neighbour_purity(e.x, e.item_ids) >= 0.9
    untrained = np.random.default_rng(0).uniform(-0.5 / 16, 0.5 / 16, size=e.x.shape)
    assert neighbour_purity(untrained, e.item_ids) < 0.5

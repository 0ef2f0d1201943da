"""Seed 000's daily two-layer network: costs (eqs. 3, 6-9), time decay (eqs. 4, 5), sparsity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from rayrec.models.daily_nn import (
    DECAY_BUCKETS,
    INIT_BLOCK,
    CostWeights,
    DailyNN,
    DailyNNConfig,
    SparseBatch,
    _block_uniform,
    clip_catalog,
    combined_cost,
    decay_bucket,
    fit_parametric_decay,
    kl_sparsity,
    local_batch,
    time_decay,
)


def sp(x: float) -> float:
    """softplus: -log(sigmoid(-x)) = -log(1 - sigmoid(x))."""
    return math.log1p(math.exp(x))


def td(a: float, decay: float) -> float:
    return 1.0 / (1.0 + a / decay)


# One customer, P = 4: X = {0 (10 days ago), 1 (50 days ago)}, Y = {1, 2}; item 3 unseen.
Z = [0.3, -1.2, 0.7, 2.0]
W1, W0 = 2.0, 0.5
INPUTS = SparseBatch.from_lists([[0, 1]], [[10.0, 50.0]])
TARGETS = SparseBatch.from_lists([[1, 2]])


def _cost(variant: str, **kw) -> float:
    cfg = DailyNNConfig(variant=variant, w1=W1, w0=W0, **kw)
    logits = torch.tensor([Z], dtype=torch.float64)
    return float(combined_cost(logits, INPUTS, TARGETS, cfg.cost_weights())[0])


def test_variant_presets_follow_section_3_5() -> None:
    p = DailyNNConfig(variant="predictor", w1=W1, w0=W0).cost_weights()
    assert (p.wa1, p.wa0, p.wp1, p.wp0) == (0.0, 0.0, W1, W0)
    assert (p.ti, p.to) == (1e6, 1e-6)
    e = DailyNNConfig(variant="ew", w1=W1, w0=W0).cost_weights()
    assert (e.wa1, e.wa0, e.wp1, e.wp0, e.ti, e.to) == (W1, W0, W1, 0.0, 1e6, 1e6)
    s = DailyNNConfig(variant="soft_split", w1=W1, w0=W0).cost_weights()
    assert (s.wa1, s.wa0, s.wp1, s.wp0, s.ti, s.to) == (W1, W0, W1, 0.0, 40.0, 4.0)
    # explicit ti/to override the preset (Table 1: predictor with parametric decay 40)
    assert DailyNNConfig(variant="predictor", ti=40).cost_weights().ti == 40


def test_predictor_cost_hand_value() -> None:
    # eq. 3 / eq. 9: w1 * sum_Y -log(yhat) + w0 * sum_{not Y} -log(1 - yhat)
    want = W1 * (sp(-Z[1]) + sp(-Z[2])) + W0 * (sp(Z[0]) + sp(Z[3]))
    assert _cost("predictor") == pytest.approx(want, rel=1e-12)


def test_ew_cost_hand_value() -> None:
    # eq. 8 with to = 1e6 and eq. 9 with wp0 = 0; negatives only outside XY = {0, 1, 2}
    auto = W1 * (td(10, 1e6) * sp(-Z[0]) + td(50, 1e6) * sp(-Z[1])) + W0 * sp(Z[3])
    predict = W1 * (sp(-Z[1]) + sp(-Z[2]))
    assert _cost("ew") == pytest.approx(auto + predict, rel=1e-12)


def test_soft_split_cost_hand_value() -> None:
    # to = 4: Td(10, 4) = 1/3.5, Td(50, 4) = 1/13.5
    auto = W1 * (sp(-Z[0]) / 3.5 + sp(-Z[1]) / 13.5) + W0 * sp(Z[3])
    predict = W1 * (sp(-Z[1]) + sp(-Z[2]))
    assert _cost("soft_split") == pytest.approx(auto + predict, rel=1e-12)


def test_variants_differ_exactly_as_equations_say() -> None:
    pred, ew, soft = _cost("predictor"), _cost("ew"), _cost("soft_split")
    # EW - predictor: + auto positives on X, - the negative term on X \ Y (item 0)
    d_ew = W1 * (td(10, 1e6) * sp(-Z[0]) + td(50, 1e6) * sp(-Z[1])) - W0 * sp(Z[0])
    assert ew - pred == pytest.approx(d_ew, rel=1e-12)
    # soft - EW: only the auto-encoder positive weights change, Td(., 4) vs Td(., 1e6)
    d_soft = W1 * ((td(10, 4) - td(10, 1e6)) * sp(-Z[0]) + (td(50, 4) - td(50, 1e6)) * sp(-Z[1]))
    assert soft - ew == pytest.approx(d_soft, rel=1e-12)
    # with to -> 0 and wa1 = 0 the auto term vanishes: a custom weight set reproduces eq. 3
    w = CostWeights(wa1=0.0, wa0=0.0, wp1=W1, wp0=W0, ti=1e6, to=1e-6)
    c = combined_cost(torch.tensor([Z], dtype=torch.float64), INPUTS, TARGETS, w)
    assert float(c[0]) == pytest.approx(pred, rel=1e-12)


def test_cost_treats_sets_and_uses_most_recent_date() -> None:
    # item 0 appears twice in X (10 and 200 days ago), item 1 in both X and Y twice
    inputs = SparseBatch.from_lists([[0, 1, 0]], [[200.0, 50.0, 10.0]])
    targets = SparseBatch.from_lists([[1, 2, 1]])
    w = DailyNNConfig(variant="soft_split", w1=W1, w0=W0).cost_weights()
    c = combined_cost(torch.tensor([Z], dtype=torch.float64), inputs, targets, w)
    assert float(c[0]) == pytest.approx(_cost("soft_split"), rel=1e-12)


def test_time_decay_hand_values() -> None:
    # eq. 5: 1 / (1 + (ref - d) / decay) for d <= ref, 0 after ref
    a = torch.tensor([0.0, 40.0, 120.0, 4.0, -1.0], dtype=torch.float64)
    got = time_decay(a, 40.0)
    want = torch.tensor([1.0, 0.5, 0.25, 1 / 1.1, 0.0], dtype=torch.float64)
    torch.testing.assert_close(got, want)
    assert float(time_decay(7.0, 1e6)) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="decay"):
        time_decay(1.0, 0.0)


def test_learned_decay_has_32_buckets() -> None:
    assert DECAY_BUCKETS == 32
    m = DailyNN(20, DailyNNConfig(decay="learned", hidden_sizes=(4, 3)))
    assert m.conv_weight.shape == (32,)
    assert m.learned_decay_curve().shape == (32,)
    width = 730.0 / 32  # ~22.8 days a bucket
    b = decay_bucket(torch.tensor([0.0, width - 0.01, width + 0.01, 729.9, 5000.0]))
    assert b.tolist() == [0, 0, 1, 31, 31]
    # initial kernel: every bucket counts 1, i.e. the binary input of eq. 3
    torch.testing.assert_close(m.learned_decay_curve(), torch.ones(32))


def test_fit_parametric_decay_recovers_parameter() -> None:
    centres = (torch.arange(32, dtype=torch.float64) + 0.5) * 730.0 / 32
    curve = 3.0 * time_decay(centres, 40.0)
    decay, scale = fit_parametric_decay(curve, return_scale=True)
    assert decay == pytest.approx(40.0, rel=1e-4)
    assert scale == pytest.approx(3.0, rel=1e-4)
    rng = np.random.default_rng(0)
    noisy = time_decay(centres, 120.0).numpy() + rng.normal(0, 0.01, 32)
    assert fit_parametric_decay(noisy) == pytest.approx(120.0, rel=0.15)
    with pytest.raises(ValueError, match="32"):
        fit_parametric_decay([1.0, 0.5])


def _dense(batch: SparseBatch, P: int, values: torch.Tensor) -> torch.Tensor:
    X = torch.zeros(batch.batch_size, P, dtype=values.dtype)  # (B, P) reference only
    X.index_put_((batch.row_ids(), batch.item_idx), values, accumulate=True)
    return X


@pytest.mark.parametrize("decay", ["none", "parametric", "learned"])
def test_sparse_input_equals_dense_reference(decay: str) -> None:
    torch.manual_seed(0)
    P = 9
    cfg = DailyNNConfig(decay=decay, hidden_sizes=(5, 4), dropout=0.0, variant="soft_split")
    m = DailyNN(P, cfg).double().eval()
    batch = SparseBatch.from_lists(
        [[0, 3, 8], [], [2], [1, 4, 5, 7]],
        [[0.0, 30.0, 400.0], [], [12.5], [700.0, 2.0, 45.0, 100.0]],
    )
    batch = SparseBatch(batch.item_idx, batch.offsets, batch.days_ago.double())
    W1 = m.input_layer.weight  # (P, H1)
    if decay == "none":
        A0 = _dense(batch, P, torch.ones(batch.nnz, dtype=torch.float64))
    elif decay == "parametric":
        A0 = _dense(batch, P, 1.0 / (1.0 + batch.days_ago / 40.0))
    else:
        with torch.no_grad():
            m.conv_weight.copy_(torch.linspace(2.0, -0.5, 32, dtype=torch.float64))
            m.conv_bias.fill_(0.3)
        # eq. 4 literally: V is the (B, P*32) one-hot of dates, conv with stride 32
        V = torch.zeros(batch.batch_size, P, 32, dtype=torch.float64)
        V[batch.row_ids(), batch.item_idx, decay_bucket(batch.days_ago)] = 1.0
        A0 = torch.relu(V @ m.conv_weight + m.conv_bias)  # (B, P)
    ref1 = torch.relu(A0 @ W1 + m.input_bias)  # (B, H1)
    ref2 = torch.relu(m.hidden_layer(ref1))
    torch.testing.assert_close(m(batch), ref2, rtol=1e-12, atol=1e-12)
    # the mapping form (Ray Data batches) gives the same
    as_map = {"item_idx": batch.item_idx, "offsets": batch.offsets, "days_ago": batch.days_ago}
    torch.testing.assert_close(m(as_map), ref2, rtol=1e-12, atol=1e-12)


def test_gradient_sign() -> None:
    logits = torch.tensor([Z], dtype=torch.float64, requires_grad=True)
    for variant in ("predictor", "ew", "soft_split"):
        w = DailyNNConfig(variant=variant).cost_weights()
        logits.grad = None
        combined_cost(logits, INPUTS, TARGETS, w).sum().backward()
        g = logits.grad[0]
        assert g[1] < 0 and g[2] < 0, variant  # purchased in Y: raising the logit helps
        assert g[3] > 0, variant  # never purchased: raising the logit hurts
        if variant == "predictor":
            assert g[0] > 0  # hard split: a past-only purchase is a negative
        else:
            assert g[0] < 0  # auto-encoder: a past purchase is a (decayed) positive
    # and through the model: nudging the output bias of a purchased item lowers the loss
    torch.manual_seed(1)
    m = DailyNN(4, DailyNNConfig(hidden_sizes=(3, 3), dropout=0.0)).double().eval()
    inputs = SparseBatch(INPUTS.item_idx, INPUTS.offsets, INPUTS.days_ago.double())
    before = float(m.loss(m(inputs), TARGETS, inputs).detach())
    with torch.no_grad():
        m.output_layer.bias[2] += 0.5
    assert float(m.loss(m(inputs), TARGETS, inputs).detach()) < before


def test_model_loss_adds_l2_and_kl() -> None:
    torch.manual_seed(2)
    cfg = DailyNNConfig(
        hidden_sizes=(6, 5),
        dropout=0.0,
        activation="sigmoid",
        l2=0.01,
        sparsity_weight=0.3,
        sparsity_target=0.05,
        variant="soft_split",
    )
    m = DailyNN(4, cfg).double().eval()
    inputs = SparseBatch(INPUTS.item_idx, INPUTS.offsets, INPUTS.days_ago.double())
    h = m(inputs)
    loss = m.loss(h, TARGETS, inputs)
    cost = combined_cost(m.score(h), inputs, TARGETS, cfg.cost_weights()).mean()
    sq = sum(
        p.pow(2).sum() for p in (m.input_layer.weight, m.hidden_layer.weight, m.output_layer.weight)
    )
    a1 = torch.sigmoid(
        m.input_layer(
            inputs.item_idx, inputs.offsets, per_sample_weights=time_decay(inputs.days_ago, 40.0)
        )
        + m.input_bias
    )
    a2 = torch.sigmoid(m.hidden_layer(a1))
    kl = kl_sparsity(a1.mean(0), 0.05) + kl_sparsity(a2.mean(0), 0.05)
    want_total = float((cost + 0.01 * sq + 0.3 * kl).detach())
    assert float(loss.detach()) == pytest.approx(want_total, rel=1e-10)
    # KL on a hand value
    want = 0.05 * math.log(0.05 / 0.1) + 0.95 * math.log(0.95 / 0.9)
    assert float(kl_sparsity(torch.tensor([0.1], dtype=torch.float64), 0.05)) == pytest.approx(
        want, rel=1e-12
    )
    with pytest.raises(ValueError, match="latest forward"):
        m.loss(h.detach().clone(), TARGETS, inputs)


def test_score_subset_matches_full() -> None:
    torch.manual_seed(3)
    m = DailyNN(10, DailyNNConfig(hidden_sizes=(4, 3), decay="none")).eval()
    h = m(SparseBatch.from_lists([[1, 2], [5]]))
    full = m.score(h)  # (2, 10)
    assert full.shape == (2, 10)
    torch.testing.assert_close(m.score(h, torch.tensor([7, 0, 3])), full[:, [7, 0, 3]])
    per_row = torch.tensor([[9, 1], [4, 4]])
    torch.testing.assert_close(m.score(h, per_row), torch.gather(full, 1, per_row))
    with pytest.raises(ValueError, match="item_idx"):
        m.score(h, torch.tensor([10]))


def _fixture(P: int = 40, B: int = 64, seed: int = 0) -> tuple[SparseBatch, SparseBatch]:
    """Customers in 4 taste groups; the future week repeats the group's popular items."""
    rng = np.random.default_rng(seed)
    xs, ds, ys = [], [], []
    for b in range(B):
        g = b % 4
        pool = np.arange(g * (P // 4), (g + 1) * (P // 4))
        x = rng.choice(pool, size=4, replace=False)
        xs.append(x.tolist())
        ds.append(rng.uniform(0, 700, size=4).round(1).tolist())
        ys.append(rng.choice(pool[:4], size=2, replace=False).tolist())
    return SparseBatch.from_lists(xs, ds), SparseBatch.from_lists(ys)


@pytest.mark.parametrize(
    "variant,decay", [("predictor", "none"), ("ew", "parametric"), ("soft_split", "learned")]
)
def test_training_steps_lower_the_loss(variant: str, decay: str) -> None:
    torch.manual_seed(0)
    inputs, targets = _fixture()
    cfg = DailyNNConfig(
        variant=variant,
        decay=decay,
        hidden_sizes=(16, 16),
        dropout=0.1,
        input_noise=0.1,
        w0=0.2,
        l2=1e-5,
        sparsity_weight=1e-3,
    )
    m = DailyNN(40, cfg)
    opt = torch.optim.Adam(m.parameters(), lr=0.02)

    def eval_loss() -> float:
        m.eval()
        with torch.no_grad():
            v = float(m.loss(m(inputs), targets, inputs))
        m.train()
        return v

    start = eval_loss()
    for _ in range(40):
        opt.zero_grad()
        loss = m.loss(m(inputs), targets, inputs)
        loss.backward()
        opt.step()
    end = eval_loss()
    assert end < 0.7 * start
    if decay == "learned":
        assert not torch.allclose(m.learned_decay_curve(), torch.ones(32))


def test_input_noise_masks_only_in_training() -> None:
    torch.manual_seed(4)
    m = DailyNN(10, DailyNNConfig(hidden_sizes=(8, 8), dropout=0.0, input_noise=0.5, decay="none"))
    batch = SparseBatch.from_lists([list(range(10))] * 3)
    m.eval()
    torch.testing.assert_close(m(batch), m(batch))
    m.train()
    h = m(batch)
    assert not torch.allclose(h[0], h[1])  # different rows, different masks


def test_clip_catalog() -> None:
    assert clip_catalog(np.array([5, 1, 9, 9, 0]), 3).tolist() == [2, 3, 0]
    assert clip_catalog(torch.tensor([1, 2]), 2).tolist() == [1, 0]
    assert clip_catalog({"a": 3, "b": 7, "c": 1}, 2) == ["b", "a"]
    with pytest.raises(ValueError, match="P=6 exceeds the number of items"):
        clip_catalog([1, 2, 3, 4, 5], 6)
    with pytest.raises(ValueError, match="P must be a positive"):
        clip_catalog([1, 2], 0)


def test_config_rejects_bad_values_naming_the_field() -> None:
    for field, bad in [
        ("dropout", 1.0),
        ("input_noise", -0.1),
        ("w1", 0.0),
        ("sparsity_target", 1.5),
        ("ti", -3.0),
        ("hidden_sizes", (0, 4)),
        ("variant", "autoencoder"),
        ("decay", "exp"),
    ]:
        with pytest.raises(ValidationError, match=field):
            DailyNNConfig(**{field: bad})
    with pytest.raises(ValidationError, match="unknown_key"):
        DailyNNConfig(unknown_key=1)
    cfg = DailyNNConfig()
    with pytest.raises(ValidationError):
        cfg.w1 = 3.0  # frozen
    assert DailyNNConfig(hidden_sizes=[8, 4]).hidden_sizes == (8, 4)


def test_bad_batches_are_rejected() -> None:
    m = DailyNN(5, DailyNNConfig(hidden_sizes=(3, 3)))
    with pytest.raises(ValueError, match="item_idx out of range"):
        m(SparseBatch.from_lists([[5]], [[1.0]]))
    with pytest.raises(ValueError, match="days_ago has negative"):
        m(SparseBatch.from_lists([[1]], [[-2.0]]))
    with pytest.raises(ValueError, match="days_ago is required"):
        m(SparseBatch.from_lists([[1]]))
    with pytest.raises(ValueError, match="offsets"):
        m(SparseBatch(torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([1.0, 2.0])))
    with pytest.raises(ValueError, match="num_items"):
        DailyNN(0)


def test_registered_in_model_registry() -> None:
    from rayrec.models import registry

    entry = registry.get("daily_nn")
    assert isinstance(entry, registry.ModelSpec)
    assert entry.config_cls is DailyNNConfig and entry.kind == "daily"
    assert entry.default_config == "daily_ml100k_train.yaml" and entry.metrics == "future_window"
    built = entry.build(DailyNNConfig(hidden_sizes=(4, 4)), 7)
    assert isinstance(built, DailyNN) and not built.is_sharded and built.num_items == 7


# ---------------------------------------------------------------------------------------
# one definition: deterministic block init, product ranges, hooks, the unsharded layout
# ---------------------------------------------------------------------------------------


def test_state_dict_keys_are_the_unsharded_layout() -> None:
    cfg = DailyNNConfig(hidden_sizes=(5, 3))
    m = DailyNN(11, cfg)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "input_layer.weight": (11, 5), "input_bias": (5,), "hidden_layer.weight": (3, 5),
        "hidden_layer.bias": (3,), "output_layer.weight": (11, 3), "output_layer.bias": (11,),
    }
    learned = DailyNN(11, DailyNNConfig(hidden_sizes=(5, 3), decay="learned")).state_dict()
    assert set(learned) - set(shapes) == {"conv_weight", "conv_bias"}
    assert learned["conv_bias"].shape == (1,)  # not 0-d: DeepSpeed flattens parameters
    assert set(DailyNN.catalog_dims) <= set(shapes)


def test_block_init_is_deterministic_and_matches_the_legacy_sharded_init() -> None:
    """The rule today's daily checkpoints (``fit``, ``model.name: daily_nn``) were trained from (``ShardedDailyNN``):
    catalog tables per block of 4096 products from (seed, block), hidden layer from
    Generator(seed + 7); no draw from the global RNG."""
    P, seed, (h1, h2) = INIT_BLOCK + 100, 3, (6, 4)
    cfg = DailyNNConfig(hidden_sizes=(h1, h2), decay="learned")
    torch.manual_seed(0)
    a = DailyNN(P, cfg, seed=seed)
    torch.manual_seed(1)  # another global RNG state: the same weights
    b = DailyNN(P, cfg, seed=seed)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(DailyNN(P, cfg, seed=seed + 1).input_layer.weight, a.input_layer.weight)
    b1, b2 = 1 / math.sqrt(h1), 1 / math.sqrt(h2)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 1)  # the second block of W1
    block1 = torch.empty(INIT_BLOCK, h1).uniform_(-b1, b1, generator=g)
    assert torch.equal(a.input_layer.weight[INIT_BLOCK:], block1[:100])
    torch.testing.assert_close(a.output_layer.weight, _block_uniform(0, P, h2, b2, seed + 1), rtol=0, atol=0)
    torch.testing.assert_close(a.output_layer.bias, _block_uniform(0, P, 1, b2, seed + 2)[:, 0], rtol=0, atol=0)
    g = torch.Generator().manual_seed(seed + 7)
    assert torch.equal(a.hidden_layer.weight, torch.empty(h2, h1).uniform_(-b1, b1, generator=g))
    assert torch.equal(a.hidden_layer.bias, torch.empty(h2).uniform_(-b1, b1, generator=g))
    assert torch.equal(a.input_bias, torch.zeros(h1)) and torch.equal(a.conv_weight, torch.ones(32))


def test_product_range_holds_exactly_its_rows_of_the_whole_model() -> None:
    P = 2 * INIT_BLOCK + 7
    cfg = DailyNNConfig(hidden_sizes=(4, 3))
    full = DailyNN(P, cfg, seed=1)
    s, e = INIT_BLOCK - 5, 2 * INIT_BLOCK + 2  # spans three init blocks
    part = DailyNN(P, cfg, seed=1, start=s, stop=e)
    assert part.is_sharded and not full.is_sharded and part.catalog_range == (s, e)
    fs, ps = full.state_dict(), part.state_dict()
    assert fs.keys() == ps.keys()
    for k, v in fs.items():
        dim = DailyNN.catalog_dims.get(k)
        want = v if dim is None else v.narrow(dim, s, e - s)
        assert torch.equal(ps[k], want), k
    for bad in ((0, 0), (-1, 3), (5, P + 1)):
        with pytest.raises(ValueError, match="product range"):
            DailyNN(P, cfg, start=bad[0], stop=bad[1])
    h = full(SparseBatch.from_lists([[1, s + 1]], [[1.0, 2.0]])).detach()
    with pytest.raises(ValueError, match="whole-catalog"):
        part.score(h, torch.tensor([s]))


@pytest.mark.parametrize("variant,decay", [("predictor", "parametric"), ("soft_split", "learned"),
                                           ("ew", "none")])
def test_product_ranges_tile_the_whole_model(variant: str, decay: str) -> None:
    """With the identity hooks, the ranges' first-layer partials sum to the whole model's,
    their logits concatenate to its logits and their costs sum to its cost: what the
    collectives of a tensor-parallel run combine."""
    P, k = 13, 6
    cfg = DailyNNConfig(variant=variant, decay=decay, hidden_sizes=(5, 4), dropout=0.0,
                        ti=40.0 if decay == "parametric" else None)
    full = DailyNN(P, cfg, seed=2).double()
    parts = [DailyNN(P, cfg, seed=2, start=0, stop=k).double(), DailyNN(P, cfg, seed=2, start=k, stop=P).double()]
    if decay == "learned":
        for m in (full, *parts):
            with torch.no_grad():
                m.conv_weight.copy_(torch.linspace(1.5, 0.2, 32, dtype=torch.float64))
                m.conv_bias.fill_(0.3)
    inputs = SparseBatch.from_lists([[0, 3, 12, 6], [], [5, 7]], [[1.0, 30.0, 400.0, 3.0], [], [0.0, 9.0]])
    inputs = SparseBatch(inputs.item_idx, inputs.offsets, inputs.days_ago.double())
    targets = SparseBatch.from_lists([[4, 9], [7, 8], [5]])
    torch.testing.assert_close(sum(m._input_partial(inputs, None) for m in parts),
                               full._input_partial(inputs, None), rtol=1e-12, atol=1e-12)
    h = full(inputs)
    torch.testing.assert_close(torch.cat([m.score(h) for m in parts], 1), full.score(h), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sum(m.loss(h, targets, inputs) for m in parts), full.loss(h, targets, inputs),
                               rtol=1e-12, atol=1e-12)
    assert all(m.reduce_sum is m.copy_to_parallel for m in parts)  # the identity defaults


def test_input_noise_is_drawn_once_per_forward_for_every_input_path() -> None:
    """One ``torch.rand(nnz)`` per forward, whatever the decay: the same global RNG
    consumption in every path (ranks stay in step) and the same masks for the same seed."""
    batch = SparseBatch.from_lists([[0, 3, 7], [1, 2, 4, 5, 6]], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0, 8.0]])
    for decay in ("none", "parametric", "learned"):
        m = DailyNN(8, DailyNNConfig(hidden_sizes=(4, 3), decay=decay, dropout=0.0, input_noise=0.5)).train()
        torch.manual_seed(5)
        m(batch)
        after = torch.rand(1)
        torch.manual_seed(5)
        torch.rand(batch.nnz)
        assert torch.equal(after, torch.rand(1)), decay


def test_local_batch_renumbers_the_range() -> None:
    b = local_batch(SparseBatch.from_lists([[1, 6000, 9999], [5001]], [[1, 2, 3], [4]]), 5000, 10_000)
    assert b.item_idx.tolist() == [1000, 4999, 1] and b.offsets.tolist() == [0, 2, 3]
    assert b.days_ago.tolist() == [2.0, 3.0, 4.0]


def test_model_file_imports_no_platform_serve_or_jobs() -> None:
    import ast
    from pathlib import Path

    src = (Path(__file__).resolve().parents[2] / "models" / "daily_nn.py").read_text()
    names = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    assert "rayrec.ops_kernels" in names
    bad = [n for n in names if n.split(".")[:2] in (["rayrec", "platform"], ["rayrec", "serve_apps"],
                                                     ["rayrec", "jobs"])]
    assert not bad, bad

"""Tune configs are rejected before any trial starts, naming the key (no Ray)."""

from __future__ import annotations

import pytest

from rayrec.platform.config import ConfigError, load_config
from rayrec.platform.tuning.run import TuneJobConfig, make_train_config, preflight
from tests.conftest import REPO


def _cfg(*extra, config="jobs/configs/tune_gru4rec_gentune.yaml"):
    return load_config(TuneJobConfig, REPO / config, [f"base_config={REPO / 'jobs/configs/gru4rec_rsc15.yaml'}", *extra])


@pytest.mark.parametrize("name", ["gentune", "random", "pbt"])
def test_shipped_tune_configs_pass_preflight(name):
    cfg = _cfg(config=f"jobs/configs/tune_gru4rec_{name}.yaml")
    base = preflight(cfg)
    t = make_train_config(base, {})
    assert t.data.valid_split == "train_valid" and t.scaling.num_workers == 0


def test_space_key_the_config_does_not_have():
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        preflight(_cfg("space={optim.lrr: {type: float, low: 0.1, high: 0.2}}"))


def test_empty_domain_names_the_key():
    with pytest.raises(ConfigError, match=r"space\.optim\.lr.*empty domain"):
        _cfg("space={optim.lr: {type: float, low: 0.2, high: 0.1}}")


def test_metric_never_reported():
    with pytest.raises(ConfigError, match="never reports 'recall@50'"):
        preflight(_cfg("metric=recall@50"))


def test_tuning_on_the_test_split_is_refused():
    with pytest.raises(ConfigError, match="test split is touched once"):
        preflight(_cfg("base_overrides=[data.valid_split=test]"))


def test_sampled_point_becomes_validated_config():
    base = preflight(_cfg())
    cfg = make_train_config(base, {"optim.lr": 0.05, "model.layers": [64, 100]})
    assert cfg.optim.lr == 0.05 and cfg.model.layers == (64, 100)
    with pytest.raises(ConfigError, match="optim.lr"):
        make_train_config(base, {"optim.lr": -1.0})


def _daily_cfg(*extra):
    return load_config(TuneJobConfig, REPO / "jobs/configs/tune_daily_ml100k_pbt.yaml",
                       [f"base_config={REPO / 'jobs/configs/daily_ml100k_train.yaml'}", *extra])


def test_shipped_daily_pbt_config_passes_preflight():
    from rayrec.platform.daily.config import DailyTrainJobConfig
    from rayrec.platform.tuning.run import config_class

    cfg = _daily_cfg()
    base = preflight(cfg)
    assert config_class(base) is DailyTrainJobConfig
    t = make_train_config(base, {"optim.lr": 0.003}, DailyTrainJobConfig)
    assert t.optim.lr == 0.003 and t.scaling.num_workers == 0 and t.run.checkpoint
    assert t.data.valid_prefix == "valid_test"
    # one torch thread per trial (cpus_per_trial 0.5 -> 1): no OpenMP oversubscription
    assert t.scaling.torch_threads == 1


def test_daily_metric_never_reported_names_it():
    with pytest.raises(ConfigError, match="never reports 'recall@20'"):
        preflight(_daily_cfg("metric=recall@20"))


def test_daily_space_key_checked_against_the_daily_config():
    with pytest.raises(ConfigError, match=r"model\.layers.*DailyTrainJobConfig"):
        preflight(_daily_cfg("space={model.layers: {type: layers, sizes: [64]}}"))


def test_daily_without_validation_windows_is_refused():
    with pytest.raises(ConfigError, match="valid_prefix"):
        preflight(_daily_cfg("base_overrides=[data.valid_prefix=null]"))


def test_trial_threads_follow_cpus_per_trial():
    base = preflight(_cfg("cpus_per_trial=2"))
    assert make_train_config(base, {}).scaling.torch_threads == 2
    base = preflight(_cfg("cpus_per_trial=1"))
    assert make_train_config(base, {}).scaling.torch_threads == 1


def test_layer_gene_as_choice_keeps_the_gene_distribution():
    """Random search draws ``layers`` genes as a seeded choice; the repeated list must give
    each layer list the probability ``LayersGene.sample`` gives it."""
    import collections

    import numpy as np

    from rayrec.platform.tuning.run import _layer_combos
    from rayrec.platform.tuning.space import LayersGene

    gene = LayersGene(min_layers=1, max_layers=3, sizes=[64, 100])
    combos = _layer_combos(gene)
    assert all(gene.contains(c) for c in combos)
    p_choice = {k: v / len(combos) for k, v in collections.Counter(map(tuple, combos)).items()}
    # exact: depth uniform (1/3), then 1/2 per layer
    for combo, p in p_choice.items():
        assert p == pytest.approx((1 / 3) * 0.5 ** len(combo))
    rng = np.random.default_rng(0)
    n = 20_000
    emp = collections.Counter(tuple(gene.sample(rng)) for _ in range(n))
    assert set(emp) == set(p_choice)
    for combo, p in p_choice.items():
        assert abs(emp[combo] / n - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert _layer_combos(LayersGene(min_layers=1, max_layers=8, sizes=list(range(1, 20)))) is None

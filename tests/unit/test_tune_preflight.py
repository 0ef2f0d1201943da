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
    # trials run the one training loop in the trial's process, with checkpoints (PBT restores)
    assert t.data.valid_split == "train_valid" and not t.ray.use_ray and t.run.checkpoint
    assert t.model.name == "gru4rec"


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
    cfg = make_train_config(base, {"optim.lr": 0.05, "model.layers": [64, 100],
                                   "model.loss.n_sample": 512, "model.loss.sample_alpha": 0.25})
    assert cfg.optim.lr == 0.05 and cfg.model.layers == (64, 100)
    assert cfg.model.loss.n_sample == 512 and cfg.model.loss.sample_alpha == 0.25
    with pytest.raises(ConfigError, match="optim.lr"):
        make_train_config(base, {"optim.lr": -1.0})


def test_space_key_of_the_old_vocabulary_names_its_new_key():
    """``loss.*`` moved into the model's config: a space over it is refused before any trial,
    naming ``model.loss``."""
    with pytest.raises(ConfigError, match=r"(?s)'loss\.n_sample'.*loss was renamed: use model\.loss"):
        preflight(_cfg("space={loss.n_sample: {type: choice, values: [512, 1024]}}"))


def test_reported_metrics_are_the_one_vocabulary():
    """What preflight accepts as ``metric`` is what the loop reports: the base set plus the
    session family's ``recall@K`` / ``mrr@K`` / ``ndcg@K`` / ``hit@K`` at ``eval.ks``."""
    for m in ("loss", "examples_per_s", "epoch_s", "recall@20", "mrr@10", "ndcg@5", "hit@20"):
        preflight(_cfg(f"metric={m}"))
    for old in ("train_loss", "events_per_s", "valid_recall@20"):
        with pytest.raises(ConfigError, match=f"never reports '{old}'"):
            preflight(_cfg(f"metric={old}"))
    base = preflight(_cfg("base_overrides=[data.train_split=train_tr, data.valid_split=train_valid, "
                          "'eval.ks=[50]']", "metric=recall@50", "accuracy_metric=mrr@50"))
    assert make_train_config(base, {}).eval.ks == [50]


def _daily_cfg(*extra):
    return load_config(TuneJobConfig, REPO / "jobs/configs/tune_daily_ml100k_pbt.yaml",
                       [f"base_config={REPO / 'jobs/configs/daily_ml100k_train.yaml'}", *extra])


def test_shipped_daily_pbt_config_passes_preflight():
    from rayrec.platform.training.config import TrainJobConfig

    cfg = _daily_cfg()
    assert cfg.metric == "precision@10"  # the one metric vocabulary (no valid_ prefix)
    base = preflight(cfg)
    t = make_train_config(base, {"optim.lr": 0.003, "optim.lr_multipliers.decay": 10.0})
    assert isinstance(t, TrainJobConfig) and t.model.name == "daily_nn"
    assert t.optim.lr == 0.003 and t.optim.lr_multipliers["decay"] == 10.0
    assert not t.ray.use_ray and t.run.checkpoint  # trials: the one loop in the trial's process
    assert t.data.valid_split == "valid_test"
    # one torch thread per trial (cpus_per_trial 0.5 -> 1): no OpenMP oversubscription
    assert t.scaling.torch_threads == 1


def test_daily_metric_never_reported_names_it():
    with pytest.raises(ConfigError, match="never reports 'recall@20'"):
        preflight(_daily_cfg("metric=recall@20"))
    for old in ("valid_precision@10", "train_loss"):  # the names before the one vocabulary
        with pytest.raises(ConfigError, match=f"never reports '{old}'"):
            preflight(_daily_cfg(f"metric={old}"))
    for m in ("precision@5", "pcc@10", "coverage@1", "loss", "fitness"):
        preflight(_daily_cfg(f"metric={m}"))


def test_daily_space_key_checked_against_the_daily_config():
    with pytest.raises(ConfigError, match=r"model\.layers.*TrainJobConfig"):
        preflight(_daily_cfg("space={model.layers: {type: layers, sizes: [64]}}"))


def test_daily_without_validation_windows_is_refused():
    with pytest.raises(ConfigError, match="valid_split"):
        preflight(_daily_cfg("base_overrides=[data.valid_split=null]"))


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

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rayrec.platform.config import ConfigError, apply_overrides, load_config, parse_override
from rayrec.platform.preprocessing.config import PreprocessJobConfig

BASE = ["source.format=rsc15_prepared", "source.path=x.tsv"]


def test_override_values_are_yaml_typed():
    assert parse_override("a.b=3e-3") == ("a.b", 3e-3)
    assert parse_override("a=[100, 100]") == ("a", [100, 100])
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=null") == ("a", None)


def test_overrides_nest_and_do_not_mutate():
    base = {"split": {"test_days": 2}}
    out = apply_overrides(base, ["split.test_days=1", "output.path=o"])
    assert out == {"split": {"test_days": 1}, "output": {"path": "o"}}
    assert base == {"split": {"test_days": 2}}
    assert apply_overrides(base, {"split.test_days": 5})["split"]["test_days"] == 5


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="split.test_days is a value"):
        apply_overrides({"split": {"test_days": 2}}, ["split.test_days.x=1"])


def test_typo_names_key_path_and_allowed_keys():
    with pytest.raises(ConfigError) as ei:
        load_config(PreprocessJobConfig, None, BASE + ["split.tset_days=1"])
    msg = str(ei.value)
    assert "split.tset_days: unknown key" in msg
    assert "test_days" in msg and "valid_days" in msg


def test_bad_value_names_key_path():
    with pytest.raises(ConfigError, match=r"validation.max_bad_fraction"):
        load_config(PreprocessJobConfig, None, BASE + ["validation.max_bad_fraction=2"])


def test_config_is_frozen_and_yaml_file_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("source: {format: movielens, path: u.data}\nsplit: {test_days: 3}\n")
    cfg = load_config(PreprocessJobConfig, f, ["split.test_days=4"])
    assert cfg.split.test_days == 4 and cfg.source.format == "movielens"
    with pytest.raises(ValidationError, match="frozen"):
        cfg.split.test_days = 1  # type: ignore[misc]


def test_window_order_checked():
    with pytest.raises(ConfigError, match="dx < dxy < dyz < dz"):
        load_config(
            PreprocessJobConfig, None,
            BASE + ["split.name=date_windows", "split.dx=2020-01-05", "split.dxy=2020-01-02",
                    "split.dyz=2020-01-07", "split.dz=2020-01-09"],
        )


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(PreprocessJobConfig, tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(PreprocessJobConfig, f)


def test_unquoted_yaml_dates_load(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("source: {format: movielens, path: u.data}\nsplit: {name: date_windows, dx: 1997-09-01, "
                 "dxy: 1998-02-15, dyz: 1998-03-15, dz: 1998-04-23}\n")
    cfg = load_config(PreprocessJobConfig, f, ["split.min_input_events=2"])
    assert str(cfg.split.dyz) == "1998-03-15" and cfg.split.min_input_events == 2


def test_placement_options_validated():
    """The two scaling options the tests above rely on reject what Ray would misread."""
    from rayrec.platform.config import ConfigError, load_config
    from rayrec.platform.training.config import TrainJobConfig

    cfg = load_config(TrainJobConfig, None, ["model.name=gru4rec", "scaling.placement_strategy=STRICT_SPREAD",
                                             "scaling.resources_per_worker={trainer: 1}"])
    assert cfg.scaling.placement_strategy == "STRICT_SPREAD"
    assert cfg.scaling.resources_per_worker == {"trainer": 1.0}
    assert TrainJobConfig(model={"name": "gru4rec"}).scaling.placement_strategy == "PACK"  # Ray's own default
    for bad, msg in (("scaling.placement_strategy=spread", "placement_strategy"),
                     ("scaling.resources_per_worker={CPU: 2}", "cpus_per_worker"),
                     ("scaling.resources_per_worker={trainer: 0}", "> 0")):
        with pytest.raises(ConfigError, match=msg):
            load_config(TrainJobConfig, None, ["model.name=gru4rec", bad])


# ---------------------------------------------------------------- TrainJobConfig: the model contract
GRU = ["model.name=gru4rec"]


@pytest.mark.parametrize("override,old_key,new_key", [
    ("loss.n_sample=64", "loss", "model.loss"),  # the whole section moved into model:
    ("loss.name=bpr-max", "loss", "model.loss"),
    ("train.cutoffs=[5, 20]", "train.cutoffs", "eval.ks"),
    ("train.eval_every=2", "train.eval_every", "eval.every"),
    ("train.eval_batch_size=64", "train.eval_batch_size", "eval.batch_size"),
    ("train.shuffle_sessions=true", "train.shuffle_sessions", "train.shuffle"),
    ("scaling.num_workers=0", "scaling.num_workers=0", "ray.use_ray=false"),
])
def test_renamed_train_keys_name_the_new_key(override, old_key, new_key):
    """A key of the vocabulary before the model contract is refused with its new name (never
    silently ignored, never a bare 'unknown key')."""
    from rayrec.platform.training.config import TrainJobConfig

    with pytest.raises(ConfigError) as ei:
        load_config(TrainJobConfig, None, [*GRU, override])
    msg = str(ei.value)
    assert f"{old_key} was renamed: use {new_key}" in msg, msg


def test_renamed_keys_in_a_yaml_file_name_the_new_key(tmp_path):
    from rayrec.platform.training.config import TrainJobConfig

    f = tmp_path / "old.yaml"
    f.write_text("model: {name: gru4rec, layers: [8]}\nloss: {name: bpr-max, n_sample: 16}\n")
    with pytest.raises(ConfigError, match=r"loss was renamed: use model\.loss"):
        load_config(TrainJobConfig, f)


def test_new_keys_are_where_the_renames_point():
    """Every new key the rename errors name is accepted and lands in the typed config."""
    from rayrec.platform.training.config import TrainJobConfig

    cfg = load_config(TrainJobConfig, None, [
        *GRU, "model.loss.n_sample=64", "model.loss.name=bpr-max", "eval.ks=[5, 20]", "eval.every=2",
        "eval.batch_size=64", "train.shuffle=true", "ray.use_ray=false"])
    assert cfg.model.loss.n_sample == 64 and cfg.model.loss.name == "bpr-max"
    assert cfg.eval.ks == [5, 20] and cfg.eval.every == 2 and cfg.eval.batch_size == 64
    assert cfg.train.shuffle and not cfg.ray.use_ray
    assert cfg.scaling.num_workers == 1  # ray.use_ray=false runs the one loop in this process
    # the model's spec supplies its job defaults (GRU4Rec: Adagrad with momentum, lr 0.2)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("adagrad_momentum", 0.2, 0.2)
    assert cfg.run.name == "gru4rec"
    with pytest.raises(ConfigError, match="scaling.num_workers"):
        load_config(TrainJobConfig, None, [*GRU, "scaling.num_workers=-1"])


def test_model_name_unknown_lists_the_trainable_models():
    from rayrec.models import registry
    from rayrec.platform.training.config import TrainJobConfig

    trainable = [s.name for s in registry.trainable_specs()]
    assert "gru4rec" in trainable
    for name in ("gru4recc", "pop"):  # a typo; a registered model this job does not train
        with pytest.raises(ConfigError) as ei:
            load_config(TrainJobConfig, None, [f"model.name={name}"])
        msg = str(ei.value)
        assert "model.name" in msg and repr(name) in msg, msg
        assert "trainable models: " + ", ".join(trainable) in msg, msg
    # a model mapping without a name says that model.name is required, and the choices
    with pytest.raises(ConfigError, match=r"model\.name is required: one of .*gru4rec"):
        load_config(TrainJobConfig, None, ["model.layers=[8]"])
    # a key of the model's config that does not exist names its path and the allowed keys
    with pytest.raises(ConfigError, match=r"model\.loss\.n_sampel: unknown key; allowed keys: .*n_sample"):
        load_config(TrainJobConfig, None, [*GRU, "model.loss.n_sampel=3"])

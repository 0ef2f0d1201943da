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

    cfg = load_config(TrainJobConfig, None, ["scaling.placement_strategy=STRICT_SPREAD",
                                             "scaling.resources_per_worker={trainer: 1}"])
    assert cfg.scaling.placement_strategy == "STRICT_SPREAD"
    assert cfg.scaling.resources_per_worker == {"trainer": 1.0}
    assert TrainJobConfig().scaling.placement_strategy == "PACK"  # Ray's own default
    for bad, msg in (("scaling.placement_strategy=spread", "placement_strategy"),
                     ("scaling.resources_per_worker={CPU: 2}", "cpus_per_worker"),
                     ("scaling.resources_per_worker={trainer: 0}", "> 0")):
        with pytest.raises(ConfigError, match=msg):
            load_config(TrainJobConfig, None, [bad])

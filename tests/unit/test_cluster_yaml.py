"""cluster.yaml and cluster-local.yaml pass Ray's schema check; broken edits fail, named."""

from __future__ import annotations

import copy

import pytest
import yaml

from rayrec.platform.cluster import ClusterConfigError, validate_cluster_yaml
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _allow_ray_import():  # validation imports Ray's autoscaler utils but never starts Ray
    yield


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-local.yaml"])
def test_shipped_cluster_configs_validate(name):
    cfg = validate_cluster_yaml(REPO / name)
    assert cfg["head_node_type"] in cfg["available_node_types"]


def _aws():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_unknown_key_is_named():
    bad = _aws()
    bad["idle_timout_minutes"] = 5
    with pytest.raises(ClusterConfigError, match="idle_timout_minutes"):
        validate_cluster_yaml(bad)


def test_head_type_not_defined():
    bad = _aws()
    bad["head_node_type"] = "head_gpu"
    with pytest.raises(ClusterConfigError, match="head_node_type"):
        validate_cluster_yaml(bad)


def test_max_below_min():
    bad = copy.deepcopy(_aws())
    bad["max_workers"] = 1
    bad["available_node_types"]["cpu_worker"]["min_workers"] = 2
    with pytest.raises(ClusterConfigError, match="max_workers"):
        validate_cluster_yaml(bad)


def test_gpu_workers_autoscale_from_zero():
    cfg = _aws()
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 < gpu["max_workers"]
    assert any("rayrec-" in c and ".whl" in c for c in cfg["setup_commands"])

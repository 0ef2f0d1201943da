"""Offline validation of Ray cluster-launcher configs with Ray's own schema check."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


class ClusterConfigError(ValueError):
    pass


def validate_cluster_yaml(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Run ``prepare_config`` + ``validate_config`` (what ``ray up`` runs before launching).

    Catches unknown keys, a head type missing from ``available_node_types``, and a
    ``max_workers`` below the sum of ``min_workers``; raises ClusterConfigError naming it.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = source if isinstance(source, dict) else yaml.safe_load(Path(source).read_text())
    name = "<dict>" if isinstance(source, dict) else str(source)
    try:
        prepared = prepare_config(copy.deepcopy(cfg))
        validate_config(prepared)
    except Exception as exc:  # jsonschema.ValidationError, ValueError
        msg = str(exc).split("\n\n")[0]
        raise ClusterConfigError(f"{name}: {msg}") from None
    return prepared

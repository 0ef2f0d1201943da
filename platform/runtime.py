"""Ray start-up shared by the jobs: join a cluster or start a local one, once."""

from __future__ import annotations

import os
from typing import Any


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> None:
    """``ray.init`` unless Ray is already up in this process.

    ``address=None`` joins ``RAY_ADDRESS`` when set (``ray job submit`` sets it) and
    otherwise starts a local Ray; ``"auto"`` joins the running cluster.  Logical
    ``num_cpus`` defaults to 4 on small machines so a Data pipeline and a 2-worker
    trainer never deadlock waiting for each other (RAY_NOTES, Ray Data section).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if address is None:
        address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
        return
    if num_cpus is None:
        num_cpus = max(4, os.cpu_count() or 1)
    ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)

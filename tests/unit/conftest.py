"""Unit tests never start Ray: an autouse fixture makes ``ray.init`` raise."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    try:
        import ray
    except ImportError:  # pragma: no cover
        yield
        return

    def forbidden(*_a, **_k):
        raise RuntimeError("unit tests must not start Ray; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", forbidden)
    yield

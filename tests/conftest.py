"""Shared test fixtures: where the public datasets are, and fixed seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RAYREC_SHARED_DATA", REPO.parent / "shared" / "data"))


def data_path(*parts: str) -> Path:
    """Path inside ../shared/data, skipping the test with a clear message when absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"public dataset not found: {p} (set RAYREC_SHARED_DATA or add ../shared/data)")
    return p


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    yield

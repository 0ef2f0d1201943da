"""The typed messages between the deployments (``DeploymentHandle`` calls).

The ingress sends a :class:`ScoreRequest` to the session recommender and gets a
:class:`ScoreResult` back; the daily recommender answers :class:`DailyRecs`,
:class:`StoreVersions` and :class:`RolledBack`.  A deployment that refuses a request answers
a :class:`Refusal` (an HTTP status and its reason), which the ingress turns into that 4xx
response.  The HTTP bodies the clients see are in :mod:`rayrec.serve_apps.schemas`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DailyRecs",
    "ModelInfo",
    "Refusal",
    "RolledBack",
    "ScoreRequest",
    "ScoreResult",
    "StoreVersion",
    "StoreVersions",
]


@dataclass(frozen=True)
class Refusal:
    """A request a deployment will not answer: ``status`` (4xx) and the reason."""

    status: int
    reason: str


@dataclass(frozen=True)
class ScoreRequest:
    """Ingress -> session recommender: the session's items (ids, oldest first), the list
    length, the items to leave out (see :func:`rayrec.serve_apps.policy.exclusions`) and the
    category filters."""

    items: list[str]
    k: int
    exclude: list[str] = field(default_factory=list)
    include_categories: list[str] = field(default_factory=list)
    exclude_categories: list[str] = field(default_factory=list)
    strict_items: bool = False
    """Refuse (404) when an item is not in the model's catalogue instead of ignoring it."""
    cache_key: str | None = None
    """The stored session's identity and version (id, event count, last update): the
    session recommender caches the session's encoding under it, so a session is encoded
    once per new event instead of on every request (a new event changes the key)."""
    events: list[tuple[str, int, str, float | None]] | None = None
    """The stored session's events ``(item_id, ts unix ms, event, value)``, oldest first, for
    models whose scorer reads per-event context (``encode_events``: time, event type, value);
    None: ``items`` only."""
    user_events: list[tuple[str, int, str, float | None]] | None = None
    """The session's user's stored events across sessions (the session's own included),
    oldest first: replayed by models with a user memory (scorer ``context_scope: user``)."""
    now_ms: int | None = None
    """The prediction moment (the request time, unix ms): the last replayed event's time
    delta is measured to it (the ``seconds_since_last_event`` of the response)."""


@dataclass(frozen=True)
class ScoreResult:
    """Session recommender -> ingress: the top-K (best first) and where it came from."""

    items: list[str]
    scores: list[float]
    source: Literal["session", "popularity"]
    unknown_items: int
    """Items of the request that are not in the model's catalogue (ignored)."""
    model: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """The session model a replica serves (``GET /versions``: ``session_model``)."""

    name: str
    """The checkpoint directory's name inside ``session.model_dir`` (no absolute path)."""
    n_items: int
    item_index_hash: str
    loaded_at: float
    epoch: int | None = None
    metrics: dict[str, Any] | None = None


@dataclass(frozen=True)
class DailyRecs:
    """Daily recommender -> ingress: a user's published list in the current version."""

    items: list[str]
    scores: list[float]
    version: str


@dataclass(frozen=True)
class StoreVersion:
    version: str
    as_of: str
    model_version: str
    n_rows: int
    is_current: bool
    backfill: bool = False
    """Stored by a ``--backfill`` daily run: listed, never made current by a publish."""


@dataclass(frozen=True)
class StoreVersions:
    """The daily store's versions (``GET /versions``: ``daily_store``)."""

    current: str | None
    versions: list[StoreVersion] = field(default_factory=list)
    problem: str | None = None
    """Why the store cannot be read now (vanished file, no version), None when it can."""


@dataclass(frozen=True)
class RolledBack:
    """The daily store's current version after a rollback."""

    current: str

"""The session-state interface of the online recommender (issue 5).

Seed 003 (GRU4Rec, section 3) recommends the next item from the *current session's*
events; to serve it behind several stateless replicas the session history must live
outside replica memory, so that any replica serves any session and a restart loses
nothing.  :class:`SessionStore` is that state, with two implementations behind one
interface: :class:`~rayrec.platform.sessions.sqlite_sessions.SQLiteSessionStore`
(embedded, one WAL file on local disk: the default for one node) and
:class:`~rayrec.platform.sessions.redis_sessions.RedisSessionStore` (multi-node).

Semantics shared by both backends (the unit tests run one test body against each):

* a session is the ordered list of its events, **bounded** to the newest
  ``max_events`` (older events are dropped on append);
* a session **expires** ``idle_ttl_s`` seconds after its last append (reads of an
  expired session return ``None``; storage is reclaimed lazily / by the server);
* a user's consumed items (for the "exclude already consumed" filter, seed 000 section
  4) are kept per user, bounded to the newest ``max_user_items``, expiring after
  ``user_ttl_s``;
* online item popularity counters (the fallback for unknown users, empty sessions and
  unknown items) are incremented on every append.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ID_PATTERN",
    "SessionEvent",
    "SessionState",
    "SessionStore",
    "StoreLimits",
    "validate_id",
]

#: Ids accepted from the outside (session, user, item): 1-128 chars, no spaces, no slashes.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:@+=-]{1,128}$")


def validate_id(value: object, field_name: str) -> str:
    """Return ``value`` if it is a valid id, else raise ``ValueError`` naming the field."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        shown = value if not isinstance(value, str) else value[:40]
        raise ValueError(
            f"{field_name} must be 1-128 characters of [A-Za-z0-9_.:@+=-], got {shown!r}"
        )
    return value


@dataclass(frozen=True)
class SessionEvent:
    """One event of a session (canonical columns, DESIGN.md section 3; ``ts`` in unix ms)."""

    item_id: str
    ts: int
    event: str = "view"
    value: float | None = None

    def to_json(self) -> dict:
        return {"item_id": self.item_id, "ts": self.ts, "event": self.event, "value": self.value}

    @classmethod
    def from_json(cls, d: dict) -> SessionEvent:
        v = d.get("value")
        return cls(str(d["item_id"]), int(d["ts"]), str(d.get("event", "view")),
                   None if v is None else float(v))


@dataclass(frozen=True)
class SessionState:
    """A session as read from the store: events oldest first (at most ``max_events``)."""

    session_id: str
    user_id: str | None
    events: list[SessionEvent] = field(default_factory=list)
    updated_at: float = 0.0  # wall-clock seconds of the last append

    @property
    def item_ids(self) -> list[str]:
        return [e.item_id for e in self.events]

    @property
    def last_ts(self) -> int | None:
        """Event time (unix ms) of the newest event; models that use the time since the last
        event (issue 5) read it from here."""
        return self.events[-1].ts if self.events else None


@dataclass(frozen=True)
class StoreLimits:
    """Bounds and expiry shared by all backends."""

    idle_ttl_s: float = 1800.0
    max_events: int = 200
    max_user_items: int = 500
    user_ttl_s: float = 30 * 86400.0

    def __post_init__(self) -> None:
        for name in ("idle_ttl_s", "user_ttl_s"):
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {v!r}")
        for name in ("max_events", "max_user_items"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


class SessionStore(ABC):
    """Session state outside replica memory (see the module docstring)."""

    limits: StoreLimits

    @abstractmethod
    def append(
        self, session_id: str, events: Sequence[SessionEvent], user_id: str | None = None
    ) -> int:
        """Append ``events`` (in order) to a session, refresh its expiry, record the user's
        consumed items and bump popularity counters.  Returns the session's event count
        after trimming to ``max_events``.  A session keeps the first non-null ``user_id``
        it was given unless a new non-null one is passed."""

    @abstractmethod
    def get(self, session_id: str) -> SessionState | None:
        """The session (None when absent or expired)."""

    @abstractmethod
    def clear(self, session_id: str) -> bool:
        """Delete a session; True if it existed."""

    @abstractmethod
    def user_items(self, user_id: str) -> list[str]:
        """Items the user consumed (newest first, at most ``max_user_items``)."""

    @abstractmethod
    def popular(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` items with the highest online counters, best first (ties by item id)."""

    def incr_popularity(self, item_ids: Iterable[str]) -> None:  # noqa: B027 - optional
        """Bump counters without a session (used by ``append``; public for backfills)."""

    def ping(self) -> bool:
        """True when the backend answers (health checks)."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
* a user's events (item, time, event type, value: what models with a user memory replay,
  seed 001 section 2.2) are kept per user, bounded to the newest ``max_user_events`` and
  expiring with the user's items; an event older than the user's newest stored event by more
  than ``max_clock_skew_s`` is refused (a per-row rejection: it would put the user's history
  out of time order);
* online item popularity counts **distinct sessions per item** within a time window
  (``popularity_window_s``): one session sending the same item a thousand times counts once
  (the fallback for unknown users, empty sessions and unknown items);
* :meth:`SessionStore.append_events` writes one request's events in **one transaction**,
  keyed by each row's ``event_id`` (idempotency key): a row whose key the store has seen
  within ``dedupe_ttl_s`` is a duplicate and changes nothing, so a retried request is a
  no-op.  A session belongs to the first user named for it; a row naming another user is
  refused (it would inject items into that user's consumed-item history);
* the committed events also go, in the same transaction, to an **outbox** that
  :meth:`SessionStore.drain_outbox` moves to the durable event log: the log is written only
  from what the store committed (see :mod:`rayrec.platform.sessions.outbox`).
"""

from __future__ import annotations

import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rayrec.platform.sessions.event_log import EventLog

__all__ = [
    "ID_PATTERN",
    "AppendResult",
    "EventRow",
    "SessionEvent",
    "SessionState",
    "SessionStore",
    "StoreLimits",
    "StoreUnavailable",
    "skew_reason",
    "validate_id",
]

#: Ids accepted from the outside (session, user, item): 1-128 chars, no spaces, no slashes.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:@+=-]{1,128}$")


def validate_id(value: object, field_name: str) -> str:
    """Return ``value`` if it is a valid id, else raise ``ValueError`` naming the field."""
    # fullmatch: ``re.match`` with ``$`` lets a trailing newline through
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        shown = value if not isinstance(value, str) else value[:40]
        raise ValueError(
            f"{field_name} must be 1-128 characters of [A-Za-z0-9_.:@+=-], got {shown!r}"
        )
    return value


def skew_reason(ts_ms: int, last_ms: int | None, max_skew_s: float) -> str | None:
    """Why a row at ``ts_ms`` is refused when its user's newest stored event is at ``last_ms``
    (more than ``max_skew_s`` later), else None (both backends use it)."""
    if last_ms is None or ts_ms >= last_ms - max_skew_s * 1000.0:
        return None
    return (f"ts: {(last_ms - ts_ms) / 1000.0:g} s older than the user's newest event "
            f"(more than max_clock_skew_s={max_skew_s:g})")


@dataclass(frozen=True)
class SessionEvent:
    """One event of a session (canonical columns, docs/your_data.md; ``ts`` in unix ms)."""

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
class EventRow:
    """One validated event of a ``POST /events`` request, with its idempotency key."""

    event_id: str
    session_id: str
    item_id: str
    ts: int
    user_id: str | None = None
    event: str = "view"
    value: float | None = None

    def to_json(self) -> dict:
        return {"event_id": self.event_id, "session_id": self.session_id,
                "item_id": self.item_id, "ts": int(self.ts), "user_id": self.user_id,
                "event": self.event, "value": self.value}

    @classmethod
    def from_json(cls, d: dict) -> EventRow:
        v = d.get("value")
        return cls(str(d["event_id"]), str(d["session_id"]), str(d["item_id"]), int(d["ts"]),
                   d.get("user_id") or None, str(d.get("event", "view")),
                   None if v is None else float(v))


@dataclass(frozen=True)
class AppendResult:
    """What :meth:`SessionStore.append_events` committed, by row index of the request."""

    stored: list[int] = field(default_factory=list)
    """Rows committed now (they are in the outbox, bound for the event log)."""
    duplicates: list[int] = field(default_factory=list)
    """Rows whose ``event_id`` was already stored (a retry): nothing changed."""
    rejected: list[tuple[int, str]] = field(default_factory=list)
    """Rows refused by the store, with the reason (e.g. the session's user differs)."""


class StoreUnavailable(RuntimeError):
    """The store cannot take writes now (locked, read-only, unreachable): answer 503 with
    this reason; nothing of the request was committed."""


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
    popularity_window_s: float = 3600.0
    """Online popularity counts the distinct sessions per item seen in this window."""
    dedupe_ttl_s: float = 86400.0
    """How long an ``event_id`` is remembered (a retry later than this is stored again)."""
    max_user_events: int = 200
    """Events kept per user for replay (:meth:`SessionStore.user_events`; the oldest are
    dropped)."""
    max_clock_skew_s: float = 300.0
    """A row older than its user's newest stored event by more than this is refused."""

    def __post_init__(self) -> None:
        for name in ("idle_ttl_s", "user_ttl_s", "popularity_window_s", "dedupe_ttl_s"):
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {v!r}")
        if not self.max_clock_skew_s >= 0:
            raise ValueError(f"max_clock_skew_s must be >= 0 seconds, got {self.max_clock_skew_s!r}")
        for name in ("max_events", "max_user_items", "max_user_events"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


class SessionStore(ABC):
    """Session state outside replica memory (see the module docstring)."""

    limits: StoreLimits

    @abstractmethod
    def append_events(self, rows: Sequence[EventRow], outbox: bool = True) -> AppendResult:
        """Store one request's events in one transaction (all or nothing), in order.

        A row whose ``event_id`` is already stored is a duplicate (no change); a row naming
        a ``user_id`` other than its session's is refused, and so is a row of a user whose
        newest stored event is more than ``max_clock_skew_s`` later than the row's ``ts``.
        Every stored row refreshes its session's expiry, is trimmed to ``max_events``, goes
        to its user's consumed items and events (the row's own ``user_id``, else the
        session's) and to the popularity window, and
        (``outbox``) to the outbox for :meth:`drain_outbox`.  Raises
        :class:`StoreUnavailable` when the store cannot write (nothing committed)."""

    def append(
        self, session_id: str, events: Sequence[SessionEvent], user_id: str | None = None
    ) -> int:
        """Append ``events`` to one session (fresh idempotency keys, no outbox: backfills and
        tests); returns the session's event count after trimming.  ValueError if the
        session belongs to another user."""
        rows = [EventRow(f"append-{uuid.uuid4().hex}", session_id, e.item_id, int(e.ts),
                         user_id, e.event, e.value) for e in events]
        res = self.append_events(rows, outbox=False)
        if res.rejected:
            raise ValueError(res.rejected[0][1])
        st = self.get(session_id)
        return 0 if st is None else len(st.events)

    def drain_outbox(self, log: EventLog, max_rows: int = 5000) -> int:
        """Move committed events from the outbox to ``log`` (each exactly once, also across
        crashes: see :mod:`rayrec.platform.sessions.outbox`, whose ``_outbox_*`` methods a
        backend implements); returns the rows logged."""
        from rayrec.platform.sessions.outbox import drain  # outbox imports this module

        return drain(self, log, max_rows)

    @abstractmethod
    def outbox_pending(self) -> int:
        """Events committed but not yet in the event log (claimed or not)."""

    @abstractmethod
    def check_writable(self) -> None:
        """Raise :class:`StoreUnavailable` (with the reason) unless a write succeeds now
        (readiness)."""

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
    def user_events(self, user_id: str) -> list[SessionEvent]:
        """The user's events across sessions, oldest first by ``ts`` (at most
        ``max_user_events``; [] for an unknown or expired user)."""

    @abstractmethod
    def popular(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` items seen by the most distinct sessions within the popularity window,
        with that count, best first (ties by item id)."""

    @abstractmethod
    def window_sessions(self) -> int:
        """Distinct sessions that sent any event within the popularity window."""

    @abstractmethod
    def incr_popularity(self, item_ids: Iterable[str], session_id: str = "backfill") -> None:
        """Record ``item_ids`` as seen by ``session_id`` now (backfills)."""

    def ping(self) -> bool:
        """True when the backend answers (health checks)."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

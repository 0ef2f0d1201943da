"""Session state stores for online serving (embedded SQLite default, Redis) and the durable
event log (issue 5)."""

from rayrec.platform.sessions.base import (
    ID_PATTERN,
    SessionEvent,
    SessionState,
    SessionStore,
    StoreLimits,
    validate_id,
)
from rayrec.platform.sessions.event_log import EventLog, LogRow, read_event_log
from rayrec.platform.sessions.sqlite_sessions import SQLiteSessionStore

__all__ = [
    "ID_PATTERN",
    "EventLog",
    "LogRow",
    "SQLiteSessionStore",
    "SessionEvent",
    "SessionState",
    "SessionStore",
    "StoreLimits",
    "make_session_store",
    "read_event_log",
    "validate_id",
]


def make_session_store(url: str, limits: StoreLimits | None = None, prefix: str = "rayrec:"):
    """``sqlite:///abs/path.db`` / a plain path -> SQLite; ``redis://host:port/db`` -> Redis."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from rayrec.platform.sessions.redis_sessions import RedisSessionStore

        return RedisSessionStore(url, limits, prefix=prefix)
    path = url[len("sqlite://"):] if url.startswith("sqlite://") else url
    return SQLiteSessionStore(path, limits)

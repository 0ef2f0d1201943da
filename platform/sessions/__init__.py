"""Session state stores for online serving (embedded SQLite default, Redis) and the durable
event log (issue 5)."""

import re

from rayrec.platform.sessions.base import (
    ID_PATTERN,
    AppendResult,
    EventRow,
    SessionEvent,
    SessionState,
    SessionStore,
    StoreLimits,
    StoreUnavailable,
    validate_id,
)
from rayrec.platform.sessions.event_log import EventLog, LogRow, logged_event_ids, read_event_log
from rayrec.platform.sessions.sqlite_sessions import SQLiteSessionStore

__all__ = [
    "ID_PATTERN",
    "SCHEMES",
    "AppendResult",
    "EventLog",
    "EventRow",
    "LogRow",
    "SQLiteSessionStore",
    "SessionEvent",
    "SessionState",
    "SessionStore",
    "StoreLimits",
    "StoreUnavailable",
    "check_store_url",
    "logged_event_ids",
    "make_session_store",
    "read_event_log",
    "validate_id",
]


SCHEMES = ("sqlite", "redis", "rediss", "unix")
"""Session store URL schemes; anything else is refused (it used to become a SQLite file)."""


def check_store_url(url: str) -> str:
    """``url`` if it names a supported session store, else ValueError saying what is known:
    ``sqlite:///abs/path.db``, a plain file path, ``redis://``, ``rediss://``, ``unix://``."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("session store must be a non-empty URL or path")
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", url)
    if m and len(m.group(1)) > 1:  # (a one-letter "scheme" is a Windows drive)
        scheme = m.group(1).lower()
        if scheme not in SCHEMES:
            raise ValueError(f"session store: unknown scheme {scheme!r} (supported: "
                             "sqlite:///abs/path.db, redis://host:port/db, rediss://, unix://)")
        if scheme == "sqlite" and not url.startswith("sqlite:///"):
            raise ValueError("session store: a SQLite URL is sqlite:///abs/path.db "
                             f"(three slashes), got {url[:60]!r}")
        if scheme != "sqlite" and not url.startswith(f"{scheme}://"):
            raise ValueError(f"session store: expected {scheme}://..., got {url[:60]!r}")
    return url


def make_session_store(url: str, limits: StoreLimits | None = None, prefix: str = "rayrec:",
                       **kw):
    """``sqlite:///abs/path.db`` / a plain path -> SQLite; ``redis://host:port/db`` -> Redis;
    any other scheme is a ValueError (see :func:`check_store_url`)."""
    check_store_url(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from rayrec.platform.sessions.redis_sessions import RedisSessionStore

        return RedisSessionStore(url, limits, prefix=prefix)
    path = url[len("sqlite://"):] if url.startswith("sqlite://") else url
    return SQLiteSessionStore(path, limits, **kw)

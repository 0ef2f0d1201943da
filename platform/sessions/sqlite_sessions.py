"""Embedded session store: one SQLite file in WAL mode on local disk (stdlib ``sqlite3``).

Tables: ``sessions(session_id, user_id, updated_at)``, ``events(id, session_id, item_id,
ts, event, value)`` (``id`` orders events), ``user_items(user_id, item_id, seen_at)`` and
``popularity(item_id, count)``.  Each ``append`` is one ``BEGIN IMMEDIATE`` transaction, so
concurrent replicas on one host never interleave a partial append.  Expiry is checked on
read against ``updated_at`` (wall clock); :meth:`SQLiteSessionStore.purge_expired` reclaims
space and is run every ``purge_every`` appends.  Several processes (Serve replicas on one
node) may share the file; for several nodes use the Redis backend.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from rayrec.platform.sessions.base import (
    SessionEvent,
    SessionState,
    SessionStore,
    StoreLimits,
)
from rayrec.platform.sqlite_util import connect_wal

__all__ = ["SQLiteSessionStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    event TEXT NOT NULL,
    value REAL
);
CREATE INDEX IF NOT EXISTS events_session ON events(session_id, id);
CREATE TABLE IF NOT EXISTS user_items (
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (user_id, item_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS user_items_time ON user_items(user_id, seen_at);
CREATE TABLE IF NOT EXISTS popularity (
    item_id TEXT PRIMARY KEY,
    count REAL NOT NULL
) WITHOUT ROWID;
"""


class SQLiteSessionStore(SessionStore):
    """Session state in one SQLite file (see the module docstring).

    ``clock`` returns wall-clock seconds (injectable for tests); connections are per thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        limits: StoreLimits | None = None,
        *,
        busy_timeout_s: float = 10.0,
        purge_every: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.limits = limits or StoreLimits()
        self.busy_timeout_s = float(busy_timeout_s)
        self.purge_every = int(purge_every)
        self.clock = clock
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._n_appends = 0
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_wal(self.path, self.busy_timeout_s, check_same_thread=False)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    # ---- writes -------------------------------------------------------------------------
    def append(
        self, session_id: str, events: Sequence[SessionEvent], user_id: str | None = None
    ) -> int:
        now = self.clock()
        lim = self.limits
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            row = c.execute(
                "SELECT user_id, updated_at FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is not None and now - row[1] > lim.idle_ttl_s:  # expired: start afresh
                c.execute("DELETE FROM events WHERE session_id = ?", (session_id,))
                row = None
            uid = user_id if user_id is not None else (row[0] if row is not None else None)
            c.execute(
                "INSERT INTO sessions(session_id, user_id, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(session_id) DO UPDATE SET user_id = excluded.user_id, "
                "updated_at = excluded.updated_at",
                (session_id, uid, now),
            )
            c.executemany(
                "INSERT INTO events(session_id, item_id, ts, event, value) VALUES (?, ?, ?, ?, ?)",
                [(session_id, e.item_id, int(e.ts), e.event, e.value) for e in events],
            )
            # keep the newest max_events
            c.execute(
                "DELETE FROM events WHERE session_id = ? AND id <= COALESCE(("
                "SELECT id FROM events WHERE session_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?"
                "), -1)",
                (session_id, session_id, lim.max_events),
            )
            n = c.execute(
                "SELECT COUNT(*) FROM events WHERE session_id = ?", (session_id,)
            ).fetchone()[0]
            if uid is not None and events:
                c.executemany(
                    "INSERT INTO user_items(user_id, item_id, seen_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(user_id, item_id) DO UPDATE SET seen_at = excluded.seen_at",
                    [(uid, e.item_id, now + i * 1e-6) for i, e in enumerate(events)],
                )
                c.execute(
                    "DELETE FROM user_items WHERE user_id = ? AND item_id NOT IN ("
                    "SELECT item_id FROM user_items WHERE user_id = ? "
                    "ORDER BY seen_at DESC LIMIT ?)",
                    (uid, uid, lim.max_user_items),
                )
            self._incr(c, (e.item_id for e in events))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self._n_appends += 1
        if self.purge_every > 0 and self._n_appends % self.purge_every == 0:
            self.purge_expired()
        return int(n)

    @staticmethod
    def _incr(c: sqlite3.Connection, item_ids: Iterable[str]) -> None:
        counts: dict[str, int] = {}
        for i in item_ids:
            counts[i] = counts.get(i, 0) + 1
        if counts:
            c.executemany(
                "INSERT INTO popularity(item_id, count) VALUES (?, ?) "
                "ON CONFLICT(item_id) DO UPDATE SET count = count + excluded.count",
                list(counts.items()),
            )

    def incr_popularity(self, item_ids: Iterable[str]) -> None:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            self._incr(c, item_ids)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def clear(self, session_id: str) -> bool:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            n = c.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,)).rowcount
            c.execute("DELETE FROM events WHERE session_id = ?", (session_id,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return n > 0

    def purge_expired(self) -> int:
        """Delete expired sessions (and old user histories); returns sessions deleted."""
        now = self.clock()
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            cutoff = now - self.limits.idle_ttl_s
            c.execute(
                "DELETE FROM events WHERE session_id IN ("
                "SELECT session_id FROM sessions WHERE updated_at < ?)",
                (cutoff,),
            )
            n = c.execute("DELETE FROM sessions WHERE updated_at < ?", (cutoff,)).rowcount
            c.execute(
                "DELETE FROM user_items WHERE seen_at < ?", (now - self.limits.user_ttl_s,)
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return int(n)

    # ---- reads --------------------------------------------------------------------------
    def get(self, session_id: str) -> SessionState | None:
        c = self._conn()
        c.execute("BEGIN")
        try:
            row = c.execute(
                "SELECT user_id, updated_at FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is None or self.clock() - row[1] > self.limits.idle_ttl_s:
                return None
            evs = c.execute(
                "SELECT item_id, ts, event, value FROM events WHERE session_id = ? ORDER BY id",
                (session_id,),
            ).fetchall()
        finally:
            c.execute("COMMIT")
        return SessionState(
            session_id, row[0], [SessionEvent(i, int(t), e, v) for i, t, e, v in evs], row[1]
        )

    def user_items(self, user_id: str) -> list[str]:
        cutoff = self.clock() - self.limits.user_ttl_s
        rows = self._conn().execute(
            "SELECT item_id FROM user_items WHERE user_id = ? AND seen_at >= ? "
            "ORDER BY seen_at DESC LIMIT ?",
            (user_id, cutoff, self.limits.max_user_items),
        ).fetchall()
        return [r[0] for r in rows]

    def popular(self, n: int) -> list[tuple[str, float]]:
        rows = self._conn().execute(
            "SELECT item_id, count FROM popularity ORDER BY count DESC, item_id LIMIT ?",
            (max(0, int(n)),),
        ).fetchall()
        return [(r[0], float(r[1])) for r in rows]

    def ping(self) -> bool:
        try:
            self._conn().execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except sqlite3.ProgrammingError:
                pass
        self._local = threading.local()

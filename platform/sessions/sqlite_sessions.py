"""Embedded session store: one SQLite file in WAL mode on local disk (stdlib ``sqlite3``).

Tables: ``sessions(session_id, user_id, updated_at)``, ``events(id, session_id, item_id,
ts, event, value)`` (``id`` orders events), ``user_items(user_id, item_id, seen_at)``,
``item_sessions(item_id, session_id, seen_at)`` (the popularity window: distinct sessions per
item), ``event_ids(event_id, seen_at)`` (idempotency keys) and ``outbox`` (committed events
bound for the event log, :mod:`rayrec.platform.sessions.outbox`).  Each ``append_events`` is
one ``BEGIN IMMEDIATE`` transaction, so concurrent replicas on one host never interleave a
partial append.  Expiry is checked on read against ``updated_at`` (wall clock);
:meth:`SQLiteSessionStore.purge_expired` reclaims space and is run every ``purge_every``
appends.  Several processes (Serve replicas on one node) may share the file; for several
nodes use the Redis backend.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from rayrec.platform.sessions.base import (
    AppendResult,
    EventRow,
    SessionEvent,
    SessionState,
    SessionStore,
    StoreLimits,
    StoreUnavailable,
    skew_reason,
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
CREATE TABLE IF NOT EXISTS user_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    event TEXT NOT NULL,
    value REAL,
    seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS user_events_user ON user_events(user_id, id);
CREATE TABLE IF NOT EXISTS item_sessions (
    item_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (item_id, session_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS item_sessions_time ON item_sessions(seen_at);
CREATE TABLE IF NOT EXISTS event_ids (
    event_id TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS event_ids_time ON event_ids(seen_at);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT,
    item_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    event TEXT NOT NULL,
    value REAL,
    claim TEXT,
    claim_file TEXT,
    claim_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_claim ON outbox(claim, seq);
CREATE TABLE IF NOT EXISTS probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at REAL NOT NULL
);
"""

_OUTBOX_COLS = "event_id, session_id, item_id, ts, user_id, event, value"


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
        probe_timeout_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.probe_timeout_s = float(probe_timeout_s)
        self.limits = limits or StoreLimits()
        self.busy_timeout_s = float(busy_timeout_s)
        self.purge_every = int(purge_every)
        self.clock = clock
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._n_appends = 0
        try:
            self._conn().executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"session store {self.path}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_wal(self.path, self.busy_timeout_s, check_same_thread=False)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    # ---- writes -------------------------------------------------------------------------
    def _begin_write(self, c: sqlite3.Connection) -> None:
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, read-only
            raise StoreUnavailable(f"session store not writable: {exc}") from exc

    def append_events(self, rows: Sequence[EventRow], outbox: bool = True) -> AppendResult:
        now = self.clock()
        lim = self.limits
        c = self._conn()
        stored: list[int] = []
        dups: list[int] = []
        rejected: list[tuple[int, str]] = []
        self._begin_write(c)
        try:
            owner: dict[str, str | None] = {}
            fresh: set[str] = set()  # expired or new sessions
            seen: set[str] = set()
            user_last: dict[str, int | None] = {}  # newest stored ts per user (clock skew)
            for i, r in enumerate(rows):
                if r.event_id in seen or c.execute(
                        "SELECT 1 FROM event_ids WHERE event_id = ?", (r.event_id,)).fetchone():
                    dups.append(i)
                    continue
                sid = r.session_id
                if sid not in owner:
                    row = c.execute("SELECT user_id, updated_at FROM sessions "
                                    "WHERE session_id = ?", (sid,)).fetchone()
                    if row is None or now - row[1] > lim.idle_ttl_s:
                        fresh.add(sid)
                        owner[sid] = None
                    else:
                        owner[sid] = row[0]
                if r.user_id is not None and owner[sid] is not None and r.user_id != owner[sid]:
                    rejected.append((i, "user_id: the session belongs to another user"))
                    continue
                uid = r.user_id if r.user_id is not None else owner[sid]
                if uid is not None:
                    if uid not in user_last:
                        user_last[uid] = c.execute(
                            "SELECT MAX(ts) FROM user_events WHERE user_id = ? AND seen_at >= ?",
                            (uid, now - lim.user_ttl_s)).fetchone()[0]
                    last = user_last[uid]
                    reason = skew_reason(int(r.ts), last, lim.max_clock_skew_s)
                    if reason is not None:
                        rejected.append((i, reason))
                        continue
                    user_last[uid] = int(r.ts) if last is None else max(int(last), int(r.ts))
                if owner[sid] is None and r.user_id is not None:
                    owner[sid] = r.user_id
                seen.add(r.event_id)
                stored.append(i)
            new = [rows[i] for i in stored]
            for sid in fresh & {r.session_id for r in new}:
                c.execute("DELETE FROM events WHERE session_id = ?", (sid,))
            c.executemany("INSERT INTO event_ids(event_id, seen_at) VALUES (?, ?)",
                          [(r.event_id, now) for r in new])
            c.executemany(
                "INSERT INTO events(session_id, item_id, ts, event, value) VALUES (?, ?, ?, ?, ?)",
                [(r.session_id, r.item_id, int(r.ts), r.event, r.value) for r in new])
            for sid in dict.fromkeys(r.session_id for r in new):
                c.execute(
                    "INSERT INTO sessions(session_id, user_id, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(session_id) DO UPDATE SET user_id = excluded.user_id, "
                    "updated_at = excluded.updated_at", (sid, owner[sid], now))
                c.execute(  # keep the newest max_events
                    "DELETE FROM events WHERE session_id = ? AND id <= COALESCE(("
                    "SELECT id FROM events WHERE session_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?"
                    "), -1)", (sid, sid, lim.max_events))
            users: dict[str, None] = {}
            ui = []
            for j, r in enumerate(new):
                uid = r.user_id if r.user_id is not None else owner[r.session_id]
                if uid is not None:
                    ui.append((uid, r.item_id, now + j * 1e-6))
                    users[uid] = None
            c.executemany(
                "INSERT INTO user_items(user_id, item_id, seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT(user_id, item_id) DO UPDATE SET seen_at = excluded.seen_at", ui)
            c.executemany(
                "INSERT INTO user_events(user_id, item_id, ts, event, value, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(r.user_id if r.user_id is not None else owner[r.session_id], r.item_id,
                  int(r.ts), r.event, r.value, now) for r in new
                 if (r.user_id if r.user_id is not None else owner[r.session_id]) is not None])
            for uid in users:
                c.execute(
                    "DELETE FROM user_items WHERE user_id = ? AND item_id NOT IN ("
                    "SELECT item_id FROM user_items WHERE user_id = ? "
                    "ORDER BY seen_at DESC LIMIT ?)", (uid, uid, lim.max_user_items))
                c.execute(  # keep the newest max_user_events
                    "DELETE FROM user_events WHERE user_id = ? AND id <= COALESCE(("
                    "SELECT id FROM user_events WHERE user_id = ? ORDER BY id DESC LIMIT 1 "
                    "OFFSET ?), -1)", (uid, uid, lim.max_user_events))
            self._seen(c, ((r.item_id, r.session_id) for r in new), now)
            if outbox:
                c.executemany(
                    f"INSERT INTO outbox({_OUTBOX_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(r.event_id, r.session_id, r.item_id, int(r.ts), r.user_id, r.event,
                      r.value) for r in new])
            c.execute("COMMIT")
        except BaseException as exc:
            if c.in_transaction:
                c.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreUnavailable(f"session store not writable: {exc}") from exc
            raise
        self._n_appends += 1
        if self.purge_every > 0 and self._n_appends % self.purge_every == 0:
            self.purge_expired()
        return AppendResult(stored, dups, rejected)

    @staticmethod
    def _seen(c: sqlite3.Connection, pairs: Iterable[tuple[str, str]], now: float) -> None:
        c.executemany(
            "INSERT INTO item_sessions(item_id, session_id, seen_at) VALUES (?, ?, ?) "
            "ON CONFLICT(item_id, session_id) DO UPDATE SET seen_at = excluded.seen_at",
            [(i, s, now) for i, s in dict.fromkeys(pairs)])

    def incr_popularity(self, item_ids: Iterable[str], session_id: str = "backfill") -> None:
        c = self._conn()
        self._begin_write(c)
        try:
            self._seen(c, ((i, session_id) for i in item_ids), self.clock())
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    # ---- outbox (rayrec.platform.sessions.outbox) ----------------------------------------
    def outbox_pending(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def _outbox_claim(self, claimant: str, path: str, max_rows: int) -> list[EventRow]:
        c = self._conn()
        self._begin_write(c)
        try:
            c.execute(
                "UPDATE outbox SET claim = ?, claim_file = ?, claim_at = ? WHERE seq IN ("
                "SELECT seq FROM outbox WHERE claim IS NULL ORDER BY seq LIMIT ?)",
                (claimant, path, time.time(), int(max_rows)))
            got = c.execute(f"SELECT {_OUTBOX_COLS} FROM outbox WHERE claim = ? ORDER BY seq",
                            (claimant,)).fetchall()
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return [EventRow(e, s, i, int(t), u, ev, v) for e, s, i, t, u, ev, v in got]

    def _outbox_ack(self, claimant: str) -> None:
        c = self._conn()
        self._begin_write(c)
        c.execute("DELETE FROM outbox WHERE claim = ?", (claimant,))
        c.execute("COMMIT")

    def _outbox_claims(self) -> list[tuple[str, str, float]]:
        return [(a, f, float(t)) for a, f, t in self._conn().execute(
            "SELECT claim, claim_file, MIN(claim_at) FROM outbox WHERE claim IS NOT NULL "
            "GROUP BY claim, claim_file").fetchall()]

    def _outbox_resolve(self, claimant: str, logged: set[str]) -> None:
        c = self._conn()
        self._begin_write(c)
        try:
            ids = [r[0] for r in c.execute("SELECT event_id FROM outbox WHERE claim = ?",
                                           (claimant,)).fetchall()]
            c.executemany("DELETE FROM outbox WHERE claim = ? AND event_id = ?",
                          [(claimant, e) for e in ids if e in logged])
            c.execute("UPDATE outbox SET claim = NULL, claim_file = NULL, claim_at = NULL "
                      "WHERE claim = ?", (claimant,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def check_writable(self) -> None:
        """A real write (the ``probe`` row) with a short busy timeout (readiness)."""
        try:
            c = connect_wal(self.path, self.probe_timeout_s, check_same_thread=False,
                            create=False)
        except (sqlite3.Error, FileNotFoundError) as exc:
            raise StoreUnavailable(f"session store {self.path.name}: {exc}") from exc
        try:
            c.execute("INSERT INTO probe(id, at) VALUES (1, ?) "
                      "ON CONFLICT(id) DO UPDATE SET at = excluded.at", (time.time(),))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"session store {self.path.name} not writable: {exc}") from exc
        finally:
            c.close()

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
            c.execute("DELETE FROM user_events WHERE seen_at < ?",
                      (now - self.limits.user_ttl_s,))
            c.execute("DELETE FROM item_sessions WHERE seen_at < ?",
                      (now - self.limits.popularity_window_s,))
            c.execute("DELETE FROM event_ids WHERE seen_at < ?",
                      (now - self.limits.dedupe_ttl_s,))
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

    def user_events(self, user_id: str) -> list[SessionEvent]:
        cutoff = self.clock() - self.limits.user_ttl_s
        rows = self._conn().execute(
            "SELECT item_id, ts, event, value FROM user_events WHERE user_id = ? AND seen_at >= ? "
            "ORDER BY ts, id", (user_id, cutoff)).fetchall()
        return [SessionEvent(i, int(t), e, v) for i, t, e, v in rows]

    def popular(self, n: int) -> list[tuple[str, float]]:
        if n <= 0:
            return []
        rows = self._conn().execute(
            "SELECT item_id, COUNT(*) AS c FROM item_sessions WHERE seen_at >= ? "
            "GROUP BY item_id ORDER BY c DESC, item_id LIMIT ?",
            (self.clock() - self.limits.popularity_window_s, int(n)),
        ).fetchall()
        return [(r[0], float(r[1])) for r in rows]

    def window_sessions(self) -> int:
        return int(self._conn().execute(
            "SELECT COUNT(DISTINCT session_id) FROM item_sessions WHERE seen_at >= ?",
            (self.clock() - self.limits.popularity_window_s,)).fetchone()[0])

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

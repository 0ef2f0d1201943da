"""SQLite implementation of the versioned recommendation store (stdlib ``sqlite3``).

Layout (one database file, WAL journal so readers never block the writer or vice versa):

* ``versions(seq, version, as_of, model_version, complete, n_rows, created_at,
  completed_at, writer, backfill)`` - ``seq`` orders versions (``backfill``: published
  without moving ``current``, an older as-of); a partial unique index makes
  ``(as_of, model_version)`` unique among *complete* versions;
* ``recs(seq, user_id, items, scores)`` - one row per user and version, ``items`` and
  ``scores`` as JSON text;
* ``pointer(id = 1, current_seq)`` - the version readers see.

A publish registers its version as incomplete, inserts the rows in batches (one short write
transaction each, so a long publish never holds the write lock for long), then in one
transaction marks the version complete and moves the pointer.  Readers resolve the pointer
and read the rows inside one read transaction, i.e. from one WAL snapshot, so they see
either the old or the new version, never a mix, and never an incomplete one.  A publish
killed mid-write leaves an incomplete version that no reader can reach; the next publish
deletes it (unless its writer, on this host, is still alive).  ``synchronous=NORMAL`` in WAL
mode survives process crashes; a power loss may drop the latest commits but never corrupts
the file or exposes a partial version.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from rayrec.platform.sqlite_util import connect_wal
from rayrec.platform.store.base import RecommendationStore, Recs, Row, VersionInfo

__all__ = ["SQLiteRecommendationStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL UNIQUE,
    as_of TEXT NOT NULL,
    model_version TEXT NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    n_rows INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    completed_at REAL,
    writer TEXT,
    backfill INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS versions_complete_key
    ON versions(as_of, model_version) WHERE complete = 1;
CREATE TABLE IF NOT EXISTS recs (
    seq INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    items TEXT NOT NULL,
    scores TEXT NOT NULL,
    PRIMARY KEY (seq, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pointer (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    current_seq INTEGER
);
INSERT OR IGNORE INTO pointer(id, current_seq) VALUES (1, NULL);
"""

_VERSION_COLS = ("seq, version, as_of, model_version, complete, n_rows, created_at, completed_at, "
                 "backfill")


class SQLiteRecommendationStore(RecommendationStore):
    """Versioned recommendations in one SQLite file (see the module docstring).

    ``keep_versions`` complete versions are kept after each publish (plus the current one);
    ``batch_size`` rows go into each insert transaction; ``busy_timeout_s`` is how long a
    connection waits for a lock held by another writer.  Connections are per thread, so one
    store object may be shared by reader threads; use one writer at a time per file.
    ``create=False`` (readers such as the online service): the file must exist and hold a
    store (``FileNotFoundError`` naming the path otherwise); it is never created.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        keep_versions: int = 3,
        *,
        batch_size: int = 5000,
        busy_timeout_s: float = 30.0,
        create: bool = True,
    ) -> None:
        if isinstance(keep_versions, bool) or int(keep_versions) != keep_versions:
            raise ValueError(f"keep_versions must be an integer >= 1, got {keep_versions!r}")
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if busy_timeout_s < 0:
            raise ValueError(f"busy_timeout_s must be >= 0, got {busy_timeout_s}")
        self.path = Path(path)
        self.keep_versions = int(keep_versions)
        self.batch_size = int(batch_size)
        self.busy_timeout_s = float(busy_timeout_s)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer_id = f"{socket.gethostname()}:{os.getpid()}"
        self.create = bool(create)
        conn = self._conn()
        if create:
            conn.executescript(_SCHEMA)
        else:
            have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = {"versions", "recs", "pointer"} - have
            if missing:
                self.close()
                raise FileNotFoundError(
                    f"{self.path} is not a recommendation store (no table(s) {sorted(missing)})")
        cols = {r[1] for r in conn.execute("PRAGMA table_info(versions)")}
        if "backfill" not in cols:  # a store written before backfills existed
            conn.execute("ALTER TABLE versions ADD COLUMN backfill INTEGER NOT NULL DEFAULT 0")

    # ---- connections --------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_wal(self.path, self.busy_timeout_s, create=self.create)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except sqlite3.ProgrammingError:  # closed from its own thread already
                pass
        self._local = threading.local()

    def _write(self) -> _Txn:
        return _Txn(self._conn(), "BEGIN IMMEDIATE")

    def _read(self) -> _Txn:
        return _Txn(self._conn(), "BEGIN")

    # ---- publish ----------------------------------------------------------------------------
    def publish(self, version: str, as_of: str, model_version: str, rows: Iterable[Row],
                make_current: bool = True) -> str:
        for field, value in (
            ("version", version),
            ("as_of", as_of),
            ("model_version", model_version),
        ):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{field} must be a non-empty string, got {value!r}")
        with self._write() as c:
            existing = c.execute(
                "SELECT version FROM versions WHERE as_of = ? AND model_version = ? "
                "AND complete = 1",
                (as_of, model_version),
            ).fetchone()
            if existing is not None:
                return existing[0]
            same_name = c.execute(
                "SELECT complete, as_of, model_version FROM versions WHERE version = ?",
                (version,),
            ).fetchone()
            if same_name is not None and same_name[0]:
                raise ValueError(
                    f"version {version!r} already holds as_of={same_name[1]!r}, "
                    f"model_version={same_name[2]!r}; pick a new version id"
                )
            self._cleanup_incomplete(c)
            if c.execute("SELECT 1 FROM versions WHERE version = ?", (version,)).fetchone():
                raise ValueError(f"version {version!r} is being written by a live publisher")
            seq = c.execute(
                "INSERT INTO versions(version, as_of, model_version, complete, created_at, "
                "writer, backfill) VALUES (?, ?, ?, 0, ?, ?, ?)",
                (version, as_of, model_version, time.time(), self._writer_id,
                 0 if make_current else 1),
            ).lastrowid
        try:
            n = self._insert_rows(seq, rows)
            with self._write() as c:
                c.execute(
                    "UPDATE versions SET complete = 1, n_rows = ?, completed_at = ? WHERE seq = ?",
                    (n, time.time(), seq),
                )
                if make_current:
                    c.execute("UPDATE pointer SET current_seq = ? WHERE id = 1", (seq,))
        except sqlite3.IntegrityError as exc:
            self._drop(seq)
            if "versions" in str(exc) or "as_of" in str(exc):
                # a concurrent publisher completed the same (as_of, model_version) first
                with self._read() as c:
                    row = c.execute(
                        "SELECT version FROM versions WHERE as_of = ? AND model_version = ? "
                        "AND complete = 1",
                        (as_of, model_version),
                    ).fetchone()
                if row is not None:
                    return row[0]
            raise
        except BaseException:
            self._drop(seq)
            raise
        self.keep_last(self.keep_versions)
        return version

    def _insert_rows(self, seq: int, rows: Iterable[Row]) -> int:
        n = 0
        for chunk in _chunks(self._encode(rows), self.batch_size):
            with self._write() as c:
                try:
                    c.executemany(
                        "INSERT INTO recs(seq, user_id, items, scores) VALUES (?, ?, ?, ?)",
                        [(seq, u, i, s) for u, i, s in chunk],
                    )
                except sqlite3.IntegrityError:
                    seen = [u for u, _, _ in chunk]
                    dup = _first_duplicate(c, seq, seen)
                    raise ValueError(
                        f"user_id {dup!r} appears twice in the published rows"
                    ) from None
            n += len(chunk)
        return n

    @staticmethod
    def _encode(rows: Iterable[Row]) -> Iterator[tuple[str, str, str]]:
        for k, row in enumerate(rows):
            try:
                user_id, items, scores = row
            except (TypeError, ValueError):
                raise ValueError(
                    f"row {k}: expected (user_id, items, scores), got {row!r}"
                ) from None
            if not isinstance(user_id, str) or not user_id:
                raise ValueError(f"row {k}: user_id must be a non-empty string, got {user_id!r}")
            items = [str(i) for i in items]
            scores = [float(s) for s in scores]
            if len(items) != len(scores):
                raise ValueError(
                    f"user_id {user_id!r}: {len(items)} items but {len(scores)} scores"
                )
            if not all(math.isfinite(s) for s in scores):
                raise ValueError(f"user_id {user_id!r}: scores must be finite")
            yield user_id, json.dumps(items), json.dumps(scores)

    def _cleanup_incomplete(self, c: sqlite3.Connection) -> list[str]:
        """Delete versions left incomplete by dead publishers (call inside a write txn)."""
        dropped = []
        host = socket.gethostname()
        for seq, version, writer in c.execute(
            "SELECT seq, version, writer FROM versions WHERE complete = 0"
        ).fetchall():
            if writer and writer != self._writer_id and _alive_here(writer, host):
                continue
            c.execute("DELETE FROM recs WHERE seq = ?", (seq,))
            c.execute("DELETE FROM versions WHERE seq = ?", (seq,))
            dropped.append(version)
        return dropped

    def _drop(self, seq: int) -> None:
        with self._write() as c:
            c.execute("DELETE FROM recs WHERE seq = ?", (seq,))
            c.execute("DELETE FROM versions WHERE seq = ? AND complete = 0", (seq,))

    # ---- reads --------------------------------------------------------------------------------
    @staticmethod
    def _info(row: tuple, current_seq: int | None) -> VersionInfo:
        seq, version, as_of, model_version, complete, n_rows, created, completed, backfill = row
        return VersionInfo(
            version=version,
            as_of=as_of,
            model_version=model_version,
            complete=bool(complete),
            n_rows=int(n_rows),
            created_at=float(created),
            completed_at=None if completed is None else float(completed),
            is_current=seq == current_seq,
            backfill=bool(backfill),
        )

    @staticmethod
    def _current_seq(c: sqlite3.Connection) -> int | None:
        return c.execute("SELECT current_seq FROM pointer WHERE id = 1").fetchone()[0]

    def _resolve(self, c: sqlite3.Connection, version: str | None) -> tuple[int, str] | None:
        if version is None:
            seq = self._current_seq(c)
            if seq is None:
                return None
            row = c.execute("SELECT seq, version FROM versions WHERE seq = ?", (seq,)).fetchone()
            return (row[0], row[1]) if row else None
        row = c.execute(
            "SELECT seq, version FROM versions WHERE version = ? AND complete = 1", (version,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no complete version {version!r} in {self.path}")
        return row[0], row[1]

    def current(self) -> VersionInfo | None:
        with self._read() as c:
            seq = self._current_seq(c)
            if seq is None:
                return None
            row = c.execute(
                f"SELECT {_VERSION_COLS} FROM versions WHERE seq = ?", (seq,)
            ).fetchone()
        return None if row is None else self._info(row, seq)

    def get(self, user_id: str, version: str | None = None) -> Recs | None:
        with self._read() as c:
            target = self._resolve(c, version)
            if target is None:
                return None
            row = c.execute(
                "SELECT items, scores FROM recs WHERE seq = ? AND user_id = ?",
                (target[0], user_id),
            ).fetchone()
        if row is None:
            return None
        return Recs(user_id, json.loads(row[0]), json.loads(row[1]), target[1])

    def get_many(self, user_ids: Iterable[str], version: str | None = None) -> dict[str, Recs]:
        ids = list(dict.fromkeys(user_ids))
        out: dict[str, Recs] = {}
        with self._read() as c:
            target = self._resolve(c, version)
            if target is None:
                return out
            seq, name = target
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                for u, items, scores in c.execute(
                    f"SELECT user_id, items, scores FROM recs WHERE seq = ? AND user_id IN ({marks})",
                    (seq, *part),
                ):
                    out[u] = Recs(u, json.loads(items), json.loads(scores), name)
        return out

    def versions(self, include_incomplete: bool = False) -> list[VersionInfo]:
        where = "" if include_incomplete else "WHERE complete = 1"
        with self._read() as c:
            seq = self._current_seq(c)
            rows = c.execute(
                f"SELECT {_VERSION_COLS} FROM versions {where} ORDER BY seq"
            ).fetchall()
        return [self._info(r, seq) for r in rows]

    # ---- pointer moves and pruning ---------------------------------------------------------------
    def rollback(self, to_version: str | None = None) -> VersionInfo:
        with self._write() as c:
            cur = self._current_seq(c)
            if to_version is None:
                if cur is None:
                    raise ValueError("nothing to roll back: no version has been published")
                row = c.execute(
                    f"SELECT {_VERSION_COLS} FROM versions WHERE complete = 1 AND seq < ? "
                    "AND backfill = 0 ORDER BY seq DESC LIMIT 1",
                    (cur,),
                ).fetchone()
                if row is None:
                    raise ValueError(
                        "no complete version older than the current one to roll back to"
                    )
            else:
                row = c.execute(
                    f"SELECT {_VERSION_COLS} FROM versions WHERE version = ? AND complete = 1",
                    (to_version,),
                ).fetchone()
                if row is None:
                    raise KeyError(f"no complete version {to_version!r} to roll back to")
            c.execute("UPDATE pointer SET current_seq = ? WHERE id = 1", (row[0],))
        return self._info(row, row[0])

    def keep_last(self, n: int) -> list[str]:
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"keep_last: n must be an integer >= 1, got {n!r}")
        with self._write() as c:
            cur = self._current_seq(c)
            rows = c.execute(
                "SELECT seq, version FROM versions WHERE complete = 1 ORDER BY seq DESC"
            ).fetchall()
            doomed = [(s, v) for s, v in rows[int(n) :] if s != cur]
            for s, _ in doomed:
                c.execute("DELETE FROM recs WHERE seq = ?", (s,))
                c.execute("DELETE FROM versions WHERE seq = ?", (s,))
        return [v for _, v in doomed]


class _Txn:
    """``with`` block: BEGIN ... COMMIT, ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection, begin: str) -> None:
        self.conn, self.begin = conn, begin

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute(self.begin)
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def _chunks(it: Iterable[tuple[str, str, str]], size: int) -> Iterator[list[tuple[str, str, str]]]:
    buf: list[tuple[str, str, str]] = []
    for x in it:
        buf.append(x)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _first_duplicate(c: sqlite3.Connection, seq: int, users: list[str]) -> str:
    seen: set[str] = set()
    for u in users:
        if u in seen:
            return u
        seen.add(u)
    for u in users:
        if c.execute("SELECT 1 FROM recs WHERE seq = ? AND user_id = ?", (seq, u)).fetchone():
            return u
    return users[0] if users else ""


def _alive_here(writer: str, host: str) -> bool:
    """Whether ``writer`` ("host:pid") is a live process on this host."""
    w_host, _, pid = writer.rpartition(":")
    if w_host != host or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""One way to open the embedded SQLite databases (recommendation store, session store)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote


def connect_wal(path: Path, busy_timeout_s: float, check_same_thread: bool = True,
                create: bool = True) -> sqlite3.Connection:
    """An autocommit connection in WAL mode with a busy timeout and ``synchronous=NORMAL``.

    ``create=False`` (readers): a missing file is a ``FileNotFoundError`` naming the path,
    never a new empty database (a wrong path must not serve an empty store forever)."""
    path = Path(path)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None,
                               check_same_thread=check_same_thread)
    else:
        if not path.is_file():
            raise FileNotFoundError(f"SQLite store not found: {path}")
        # mode=rw: open read-write but never create (a file removed in between errors too)
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=rw", uri=True,
                               timeout=busy_timeout_s, isolation_level=None,
                               check_same_thread=check_same_thread)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise RuntimeError(f"{path}: could not switch to WAL journal (got {mode})")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn

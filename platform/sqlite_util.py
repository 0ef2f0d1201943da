"""One way to open the embedded SQLite databases (recommendation store, session store)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_wal(path: Path, busy_timeout_s: float, check_same_thread: bool = True) -> sqlite3.Connection:
    """An autocommit connection in WAL mode with a busy timeout and ``synchronous=NORMAL``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=check_same_thread
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise RuntimeError(f"{path}: could not switch to WAL journal (got {mode})")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn

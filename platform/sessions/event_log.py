"""Durable event log in the canonical interaction schema (docs/your_data.md: the canonical schema).

Every event posted to the online service is appended here, so the next preprocess / daily run
trains on it (issue 5).  Files live in one directory, one writer per file (the file name carries
the writer's host and pid, so replicas never interleave), rotated when a file exceeds
``rotate_bytes`` or the UTC date changes:

* ``format="csv"`` (default, the durable one): ``events-YYYYMMDD-<writer>-NNNN.csv`` with a
  header ``user_id,session_id,item_id,ts,event,value``; ``ts`` in unix milliseconds.  Every
  :meth:`EventLog.append` writes whole lines, flushes and (``fsync=True``) fsyncs before
  returning, so an acknowledged batch survives a process crash.  Read it back with the
  generic reader: ``source: {format: csv, path: <file>, ts_format: unix_ms, column_map:
  {user_id: user_id, session_id: session_id, item_id: item_id, ts: ts, event: event,
  value: value}}``.
* ``format="parquet"``: the same columns with the canonical Arrow types (``ts`` as
  ``timestamp[ms, UTC]``), one row group per append; the file is written as
  ``*.parquet.inprogress`` and renamed to ``*.parquet`` when rotated or closed (a Parquet
  file is only readable once its footer is written), so readers only ever see complete files.
  Durability is per closed file; prefer CSV when every acknowledged event must survive a crash.

Both formats carry a last column ``event_id``: the idempotency key the session store committed
the event under.  The online service writes this log only from the session store's outbox
(:mod:`rayrec.platform.sessions.outbox`), which uses the column to recover a drain that crashed
after writing: no event is logged twice or lost.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from rayrec.platform.schema import INTERACTIONS

__all__ = ["EventLog", "LogRow", "logged_event_ids", "read_event_log"]

COLUMNS = ["user_id", "session_id", "item_id", "ts", "event", "value"]
LOG_COLUMNS = [*COLUMNS, "event_id"]
LOG_SCHEMA = INTERACTIONS.append(pa.field("event_id", pa.string(), nullable=True))


@dataclass(frozen=True)
class LogRow:
    """One canonical interaction (``ts`` in unix ms)."""

    user_id: str | None
    session_id: str | None
    item_id: str
    ts: int
    event: str
    value: float | None
    event_id: str | None = None


def _utc_day(ts_s: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(ts_s))


class EventLog:
    """Append-only, rotated event log (see the module docstring). Thread-safe."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        format: Literal["csv", "parquet"] = "csv",
        rotate_bytes: int = 64 << 20,
        rotate_daily: bool = True,
        fsync: bool = True,
        writer_id: str | None = None,
    ) -> None:
        if format not in ("csv", "parquet"):
            raise ValueError(f"format must be 'csv' or 'parquet', got {format!r}")
        if rotate_bytes < 1:
            raise ValueError(f"rotate_bytes must be >= 1, got {rotate_bytes}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.format = format
        self.rotate_bytes = int(rotate_bytes)
        self.rotate_daily = bool(rotate_daily)
        self.fsync = bool(fsync)
        self.writer_id = writer_id or f"{socket.gethostname()}-{os.getpid()}"
        self._lock = threading.Lock()
        self.drain_lock = threading.Lock()
        """Held by :func:`rayrec.platform.sessions.outbox.drain` (one drain per process)."""
        self._fh = None
        self._pq: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._day: str | None = None
        self._seq = 0
        self.rows_written = 0

    # ---- files --------------------------------------------------------------------------
    def _next_path(self, day: str) -> Path:
        while True:
            self._seq += 1
            stem = f"events-{day}-{self.writer_id}-{self._seq:04d}"
            suffix = ".csv" if self.format == "csv" else ".parquet"
            p = self.dir / (stem + suffix)
            if not p.exists() and not (self.dir / (stem + suffix + ".inprogress")).exists():
                return p

    def _close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._pq is not None:
            self._pq.close()
            self._pq = None
            assert self._path is not None
            os.replace(str(self._path) + ".inprogress", self._path)
        self._path = None

    def _size(self) -> int:
        if self._path is None:
            return 0
        p = self._path if self.format == "csv" else Path(str(self._path) + ".inprogress")
        try:
            return p.stat().st_size
        except FileNotFoundError:
            return 0

    def _ensure_file(self, now_s: float) -> None:
        day = _utc_day(now_s)
        if self._path is not None and (
            (self.rotate_daily and day != self._day) or self._size() >= self.rotate_bytes
        ):
            self._close_file()
        if self._path is None:
            self._day = day
            self._path = self._next_path(day)
            if self.format == "csv":
                self._fh = open(self._path, "a", newline="", encoding="utf-8")
                self._fh.write(",".join(LOG_COLUMNS) + "\n")
            else:
                self._pq = pq.ParquetWriter(str(self._path) + ".inprogress", LOG_SCHEMA)

    # ---- API ----------------------------------------------------------------------------
    def open_file(self) -> Path:
        """The file the next :meth:`append` writes to (opened / rotated now)."""
        with self._lock:
            self._ensure_file(time.time())
            assert self._path is not None
            return self._path

    def append(self, rows: Sequence[LogRow], path: Path | None = None) -> int:
        """Append rows durably (see the module docstring); returns the number written.
        ``path`` (from :meth:`open_file`): write to that file, no rotation in between."""
        if not rows:
            return 0
        with self._lock:
            if path is None:
                self._ensure_file(time.time())
            elif path != self._path:
                raise RuntimeError(f"event log rotated away from {path.name} before the write")
            if self.format == "csv":
                buf = io.StringIO()
                w = csv.writer(buf, lineterminator="\n")
                for r in rows:
                    w.writerow([
                        "" if r.user_id is None else r.user_id,
                        "" if r.session_id is None else r.session_id,
                        r.item_id, int(r.ts), r.event,
                        "" if r.value is None else repr(float(r.value)),
                        "" if r.event_id is None else r.event_id,
                    ])
                assert self._fh is not None
                self._fh.write(buf.getvalue())
                self._fh.flush()
                if self.fsync:
                    os.fsync(self._fh.fileno())
            else:
                table = pa.table(
                    {
                        "user_id": pa.array([r.user_id for r in rows], pa.string()),
                        "session_id": pa.array([r.session_id for r in rows], pa.string()),
                        "item_id": pa.array([r.item_id for r in rows], pa.string()),
                        "ts": pa.array([int(r.ts) for r in rows], pa.int64()).cast(
                            INTERACTIONS.field("ts").type
                        ),
                        "event": pa.array([r.event for r in rows], pa.string()).dictionary_encode(),
                        "value": pa.array([r.value for r in rows], pa.float32()),
                        "event_id": pa.array([r.event_id for r in rows], pa.string()),
                    },
                    schema=LOG_SCHEMA,
                )
                assert self._pq is not None
                self._pq.write_table(table)
            self.rows_written += len(rows)
            return len(rows)

    def rotate(self) -> None:
        """Close the current file now (the next append opens a new one)."""
        with self._lock:
            self._close_file()

    def files(self) -> list[Path]:
        """Complete (readable) log files in this directory, oldest first by name."""
        pats = ("events-*.csv", "events-*.parquet")
        return sorted(p for pat in pats for p in self.dir.glob(pat))

    def close(self) -> None:
        self.rotate()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def logged_event_ids(path: str | os.PathLike[str]) -> set[str]:
    """The ``event_id`` values in one complete log file (empty if absent or not readable:
    a Parquet file whose writer died before closing it is never renamed, never read)."""
    p = Path(path)
    if not p.is_file():
        return set()
    if p.suffix == ".csv":
        with open(p, newline="", encoding="utf-8") as fh:
            rd = csv.reader(fh)
            header = next(rd, None)
            if not header or "event_id" not in header:
                return set()
            j = header.index("event_id")
            # a torn last line (crash mid-write) has fewer fields: not logged
            return {row[j] for row in rd if len(row) == len(header) and row[j]}
    if p.suffix == ".parquet":
        t = pq.read_table(p, columns=["event_id"])
        return {x for x in t["event_id"].to_pylist() if x}
    return set()


def read_event_log(directory: str | os.PathLike[str]):
    """All complete log files of a directory as one pandas frame (canonical columns; ``ts``
    as unix ms int64) - a convenience for tests and ad-hoc checks."""
    import pandas as pd

    frames = []
    for p in sorted(Path(directory).glob("events-*")):
        if p.suffix == ".csv":
            df = pd.read_csv(p, dtype={"user_id": "string", "session_id": "string",
                                       "item_id": "string", "event": "string",
                                       "event_id": "string"})
        elif p.suffix == ".parquet":
            t = pq.read_table(p)
            t = t.set_column(t.schema.get_field_index("ts"), "ts", t["ts"].cast(pa.int64()))
            t = t.set_column(t.schema.get_field_index("event"), "event",
                             t["event"].cast(pa.string()))
            df = t.to_pandas()
        else:
            continue
        frames.append(df.reindex(columns=LOG_COLUMNS))
    if not frames:
        return pd.DataFrame(columns=LOG_COLUMNS)
    return pd.concat(frames, ignore_index=True)

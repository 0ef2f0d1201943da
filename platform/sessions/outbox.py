"""The transactional outbox between a session store and the durable event log.

``POST /events`` commits a request's events to the session store in one transaction; the same
transaction puts them in the store's outbox.  Only then are they copied to the event log, by
:func:`drain`, so the log never holds an event the store did not commit (a request that fails
in the store leaves no trace in the log, and its retry is logged once).

A drain, one at a time per process (``EventLog.drain_lock``), repeats:

1. open the log file it will write to;
2. *claim* up to ``max_rows`` unclaimed outbox rows in one store transaction, recording the
   claimant (``host:pid:nonce``), the log file and the time;
3. append the rows to that file (with their ``event_id``; CSV is fsynced);
4. *acknowledge*: delete the claimed rows.

A drainer that dies between 2 and 4 leaves a *stale* claim (its process is gone on this host,
or the claim is older than ``lease_s`` on another host).  The next drain resolves it from the
log file the claim names: rows whose ``event_id`` is in that file were logged and are deleted,
the others are released and logged again.  So every committed event reaches the log exactly
once, whichever step a crash hits (tests/unit/test_session_stores.py kills a drainer at each).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

from rayrec.platform.sessions.base import EventRow
from rayrec.platform.sessions.event_log import EventLog, LogRow, logged_event_ids

__all__ = ["OutboxBackend", "claim_is_stale", "drain", "new_claimant"]

LEASE_S = 60.0
"""A claim of a drainer on another host is stale after this long."""


class OutboxBackend(Protocol):
    """What a session store implements for :func:`drain`."""

    def _outbox_claim(self, claimant: str, path: str, max_rows: int) -> list[EventRow]: ...

    def _outbox_ack(self, claimant: str) -> None: ...

    def _outbox_claims(self) -> list[tuple[str, str, float]]:
        """(claimant, log file, claimed_at) of every open claim."""
        ...

    def _outbox_resolve(self, claimant: str, logged: set[str]) -> None:
        """Delete the claim's rows whose event_id is in ``logged``; release the others."""
        ...


def new_claimant() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim_is_stale(claimant: str, claimed_at: float, now: float, lease_s: float = LEASE_S) -> bool:
    """A claim whose drainer is dead (same host: no such pid) or silent for ``lease_s``."""
    host, _, rest = claimant.partition(":")
    pid, _, _ = rest.partition(":")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            return False  # ours (drains in this process hold EventLog.drain_lock)
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return now - claimed_at > 10 * lease_s
    return now - claimed_at > lease_s


def _log_rows(rows: Sequence[EventRow]) -> list[LogRow]:
    return [LogRow(r.user_id, r.session_id, r.item_id, int(r.ts), r.event, r.value, r.event_id)
            for r in rows]


def drain(store: OutboxBackend, log: EventLog, max_rows: int = 5000,
          lease_s: float = LEASE_S) -> int:
    """Copy the store's committed outbox rows to ``log``, each exactly once (see the module
    docstring); returns the rows logged by this call."""
    total = 0
    with log.drain_lock:
        now = time.time()
        for claimant, path, at in store._outbox_claims():
            if claim_is_stale(claimant, at, now, lease_s):
                store._outbox_resolve(claimant, logged_event_ids(path))
        while True:
            path = log.open_file()
            claimant = new_claimant()
            rows = store._outbox_claim(claimant, str(path), max_rows)
            if not rows:
                return total
            try:
                log.append(_log_rows(rows), path=path)
            except BaseException:
                # the write failed in this process: what reached the file counts as logged
                store._outbox_resolve(claimant, logged_event_ids(path))
                raise
            store._outbox_ack(claimant)
            total += len(rows)
            if len(rows) < max_rows:
                return total

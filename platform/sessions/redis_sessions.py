"""Redis session store for multi-node serving (python ``redis`` client).

Keys (all under one ``prefix``, so several apps or test runs share a server safely):

* ``{prefix}se:{session_id}`` - list of JSON events, oldest first, trimmed to ``max_events``
  with ``LTRIM`` on every append;
* ``{prefix}sm:{session_id}`` - hash ``user_id``, ``updated_at``;
* ``{prefix}u:{user_id}`` - sorted set item -> last-seen time, trimmed to
  ``max_user_items``;
* ``{prefix}pop`` - sorted set item -> online popularity counter.

Expiry is Redis's own: every append ``PEXPIRE``\\ s the session keys to ``idle_ttl_s`` (and
the user's set to ``user_ttl_s``), so idle sessions disappear without a sweeper.  An append is
one ``MULTI``/``EXEC`` pipeline: other clients never see half of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence

from rayrec.platform.sessions.base import (
    SessionEvent,
    SessionState,
    SessionStore,
    StoreLimits,
)

__all__ = ["RedisSessionStore"]


class RedisSessionStore(SessionStore):
    """Session state in Redis (see the module docstring).

    ``url`` like ``redis://127.0.0.1:6379/0``; ``client`` may be given instead (tests).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        limits: StoreLimits | None = None,
        *,
        prefix: str = "rayrec:",
        socket_timeout_s: float = 2.0,
        client=None,
    ) -> None:
        import redis

        self.limits = limits or StoreLimits()
        self.prefix = prefix
        self.url = url
        self.r = client if client is not None else redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
            decode_responses=True,
        )

    def _k(self, kind: str, key: str = "") -> str:
        return f"{self.prefix}{kind}:{key}" if key else f"{self.prefix}{kind}"

    def append(
        self, session_id: str, events: Sequence[SessionEvent], user_id: str | None = None
    ) -> int:
        lim = self.limits
        now = time.time()
        ttl_ms = max(1, int(lim.idle_ttl_s * 1000))
        ek, mk = self._k("se", session_id), self._k("sm", session_id)
        p = self.r.pipeline(transaction=True)
        if events:
            p.rpush(ek, *[json.dumps(e.to_json(), separators=(",", ":")) for e in events])
        p.ltrim(ek, -lim.max_events, -1)
        mapping = {"updated_at": repr(now)}
        if user_id is not None:
            mapping["user_id"] = user_id
        p.hset(mk, mapping=mapping)
        p.hget(mk, "user_id")
        p.llen(ek)
        p.pexpire(ek, ttl_ms)
        p.pexpire(mk, ttl_ms)
        res = p.execute()
        off = 1 if events else 0
        uid = res[off + 2]
        n = int(res[off + 3])
        p = self.r.pipeline(transaction=True)
        if uid is not None and events:
            uk = self._k("u", uid)
            p.zadd(uk, {e.item_id: now + i * 1e-6 for i, e in enumerate(events)})
            p.zremrangebyrank(uk, 0, -(lim.max_user_items + 1))
            p.pexpire(uk, max(1, int(lim.user_ttl_s * 1000)))
        self._incr(p, (e.item_id for e in events))
        p.execute()
        return n

    def _incr(self, p, item_ids: Iterable[str]) -> None:
        counts: dict[str, int] = {}
        for i in item_ids:
            counts[i] = counts.get(i, 0) + 1
        for item, c in counts.items():
            p.zincrby(self._k("pop"), c, item)

    def incr_popularity(self, item_ids: Iterable[str]) -> None:
        p = self.r.pipeline(transaction=True)
        self._incr(p, item_ids)
        p.execute()

    def get(self, session_id: str) -> SessionState | None:
        p = self.r.pipeline(transaction=True)
        p.hgetall(self._k("sm", session_id))
        p.lrange(self._k("se", session_id), 0, -1)
        meta, raw = p.execute()
        if not meta:
            return None
        events = [SessionEvent.from_json(json.loads(x)) for x in raw]
        return SessionState(
            session_id, meta.get("user_id"), events, float(meta.get("updated_at", 0.0))
        )

    def clear(self, session_id: str) -> bool:
        return int(self.r.delete(self._k("se", session_id), self._k("sm", session_id))) > 0

    def user_items(self, user_id: str) -> list[str]:
        return list(self.r.zrevrange(self._k("u", user_id), 0, self.limits.max_user_items - 1))

    def popular(self, n: int) -> list[tuple[str, float]]:
        if n <= 0:
            return []
        rows = self.r.zrevrange(self._k("pop"), 0, 2 * n - 1, withscores=True)
        rows = sorted(((str(i), float(s)) for i, s in rows), key=lambda t: (-t[1], t[0]))
        return rows[:n]

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except Exception:
            return False

    def delete_prefix(self) -> int:
        """Delete every key under this store's prefix (tests, tear-down); returns the count."""
        n = 0
        for key in self.r.scan_iter(match=f"{self.prefix}*", count=500):
            n += int(self.r.delete(key))
        return n

    def close(self) -> None:
        try:
            self.r.close()
        except Exception:
            pass

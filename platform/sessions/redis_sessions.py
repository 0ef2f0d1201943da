"""Redis session store for multi-node serving (python ``redis`` client).

Keys (all under one ``prefix``, so several apps or test runs share a server safely):

* ``{prefix}se:{session_id}`` - list of JSON events, oldest first, trimmed to ``max_events``
  with ``LTRIM`` on every append;
* ``{prefix}sm:{session_id}`` - hash ``user_id``, ``updated_at``;
* ``{prefix}u:{user_id}`` - sorted set item -> last-seen time, trimmed to
  ``max_user_items``;
* ``{prefix}ue:{user_id}`` - list of the user's JSON events (arrival order), trimmed to
  ``max_user_events``, and ``{prefix}ut:{user_id}`` the newest event time (unix ms) stored
  for the user (the clock-skew check), both expiring after ``user_ttl_s``;
* ``{prefix}eid:{event_id}`` - an idempotency key, expiring after ``dedupe_ttl_s``;
* ``{prefix}pop:{bucket}`` - sorted set item -> distinct sessions that sent it in that time
  bucket (``popularity_window_s / 12`` long, at least 10 s), with
  ``{prefix}pops:{bucket}:{item}`` the set of those sessions; the window's popularity is the
  sum over its buckets (a session active across buckets counts once per bucket);
* ``{prefix}pophll:{bucket}`` - a HyperLogLog of the sessions active in the bucket;
* ``{prefix}outbox`` - list of committed events bound for the event log;
  ``{prefix}claim:{claimant}`` a drainer's claimed rows and ``{prefix}claims`` (hash
  claimant -> JSON ``{file, at}``), see :mod:`rayrec.platform.sessions.outbox`.

Expiry is Redis's own: every append ``PEXPIRE``\\ s the session keys to ``idle_ttl_s`` (and
the user's set to ``user_ttl_s``), so idle sessions disappear without a sweeper.  An append is
one Lua script (atomic on the server): other clients never see half of it, and a duplicate
``event_id`` or a refused row is decided inside the same atomic step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence

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

__all__ = ["RedisSessionStore"]

# ARGV: prefix, now, idle_ttl_ms, max_events, max_user_items, user_ttl_ms, dedupe_ttl_ms,
# bucket, bucket_ttl_ms, outbox (0/1), rows (JSON list of EventRow.to_json()),
# max_user_events, max_clock_skew_ms.
# Returns one status per row: "new", "dup", "user" or "skew:<the user's newest ts>".
_APPEND = """
local p = ARGV[1]
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local max_events = tonumber(ARGV[4])
local max_ui = tonumber(ARGV[5])
local user_ttl = tonumber(ARGV[6])
local dd_ttl = tonumber(ARGV[7])
local bucket = ARGV[8]
local bucket_ttl = tonumber(ARGV[9])
local outbox = ARGV[10] == '1'
local rows = cjson.decode(ARGV[11])
local max_ue = tonumber(ARGV[12])
local skew_ms = tonumber(ARGV[13])
local status, owner, batch, last = {}, {}, {}, {}
local function uid_of(r)
  if r.user_id == nil or r.user_id == cjson.null then return false end
  return r.user_id
end
for i, r in ipairs(rows) do
  local sid = r.session_id
  if owner[sid] == nil then
    owner[sid] = redis.call('HGET', p .. 'sm:' .. sid, 'user_id')
  end
  local u = uid_of(r)
  if batch[r.event_id] or redis.call('EXISTS', p .. 'eid:' .. r.event_id) == 1 then
    status[i] = 'dup'
  elseif u and owner[sid] and owner[sid] ~= u then
    status[i] = 'user'
  else
    local uu = u or owner[sid]
    local ts = tonumber(r.ts)
    if uu and last[uu] == nil then
      local v = redis.call('GET', p .. 'ut:' .. uu)
      last[uu] = (v and tonumber(v)) or false
    end
    if uu and last[uu] and ts < last[uu] - skew_ms then
      status[i] = 'skew:' .. string.format('%d', last[uu])
    else
      status[i] = 'new'
      batch[r.event_id] = true
      if u and not owner[sid] then owner[sid] = u end
      if uu and ((not last[uu]) or ts > last[uu]) then last[uu] = ts end
    end
  end
end
local touched, users = {}, {}
local popk = p .. 'pop:' .. bucket
for i, r in ipairs(rows) do
  if status[i] == 'new' then
    local sid = r.session_id
    redis.call('SET', p .. 'eid:' .. r.event_id, '1', 'PX', dd_ttl)
    redis.call('RPUSH', p .. 'se:' .. sid, cjson.encode(
      {item_id = r.item_id, ts = r.ts, event = r.event, value = r.value}))
    touched[sid] = true
    local u = uid_of(r) or owner[sid]
    if u then
      redis.call('ZADD', p .. 'u:' .. u, now + i * 1e-6, r.item_id)
      redis.call('RPUSH', p .. 'ue:' .. u, cjson.encode(
        {item_id = r.item_id, ts = r.ts, event = r.event, value = r.value}))
      users[u] = true
    end
    local sk = p .. 'pops:' .. bucket .. ':' .. r.item_id
    if redis.call('SADD', sk, sid) == 1 then
      redis.call('ZINCRBY', popk, 1, r.item_id)
      redis.call('PEXPIRE', sk, bucket_ttl)
    end
    redis.call('PFADD', p .. 'pophll:' .. bucket, sid)
    if outbox then redis.call('RPUSH', p .. 'outbox', cjson.encode(r)) end
  end
end
for sid, _ in pairs(touched) do
  local ek, mk = p .. 'se:' .. sid, p .. 'sm:' .. sid
  redis.call('LTRIM', ek, -max_events, -1)
  redis.call('HSET', mk, 'updated_at', tostring(now))
  if owner[sid] then redis.call('HSET', mk, 'user_id', owner[sid]) end
  redis.call('PEXPIRE', ek, ttl)
  redis.call('PEXPIRE', mk, ttl)
end
for u, _ in pairs(users) do
  local uk = p .. 'u:' .. u
  redis.call('ZREMRANGEBYRANK', uk, 0, -(max_ui + 1))
  redis.call('PEXPIRE', uk, user_ttl)
  redis.call('LTRIM', p .. 'ue:' .. u, -max_ue, -1)
  redis.call('PEXPIRE', p .. 'ue:' .. u, user_ttl)
  if last[u] then
    redis.call('SET', p .. 'ut:' .. u, string.format('%d', last[u]), 'PX', user_ttl)
  end
end
if next(touched) ~= nil then
  redis.call('PEXPIRE', popk, bucket_ttl)
  redis.call('PEXPIRE', p .. 'pophll:' .. bucket, bucket_ttl)
end
return status
"""

# ARGV: prefix, claimant, claim meta JSON, max_rows -> the claimed rows (JSON strings)
_CLAIM = """
local p = ARGV[1]
local rows = redis.call('LRANGE', p .. 'outbox', 0, tonumber(ARGV[4]) - 1)
if #rows == 0 then return rows end
redis.call('LTRIM', p .. 'outbox', #rows, -1)
redis.call('RPUSH', p .. 'claim:' .. ARGV[2], unpack(rows))
redis.call('HSET', p .. 'claims', ARGV[2], ARGV[3])
return rows
"""

# ARGV: prefix, claimant, logged event ids (JSON list): requeue the unlogged rows
_RESOLVE = """
local p = ARGV[1]
local logged = {}
for _, e in ipairs(cjson.decode(ARGV[3])) do logged[e] = true end
local key = p .. 'claim:' .. ARGV[2]
local rows = redis.call('LRANGE', key, 0, -1)
local back = {}
for _, raw in ipairs(rows) do
  if not logged[cjson.decode(raw).event_id] then table.insert(back, raw) end
end
for j = #back, 1, -1 do redis.call('LPUSH', p .. 'outbox', back[j]) end
redis.call('DEL', key)
redis.call('HDEL', p .. 'claims', ARGV[2])
return #back
"""


class RedisSessionStore(SessionStore):
    """Session state in Redis (see the module docstring).

    ``url`` like ``redis://127.0.0.1:6379/0``; ``client`` may be given instead (tests);
    ``clock`` returns wall-clock seconds (the popularity window's buckets; tests).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        limits: StoreLimits | None = None,
        *,
        prefix: str = "rayrec:",
        socket_timeout_s: float = 2.0,
        client=None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import redis

        self.limits = limits or StoreLimits()
        self.prefix = prefix
        self.url = url
        self.clock = clock
        self.r = client if client is not None else redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
            decode_responses=True,
        )
        self._append = self.r.register_script(_APPEND)
        self._claim = self.r.register_script(_CLAIM)
        self._resolve = self.r.register_script(_RESOLVE)
        self.bucket_s = max(10.0, self.limits.popularity_window_s / 12.0)

    def _k(self, kind: str, key: str = "") -> str:
        return f"{self.prefix}{kind}:{key}" if key else f"{self.prefix}{kind}"

    def _call(self, fn, *args):
        import redis

        try:
            return fn(*args)
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError) as exc:
            raise StoreUnavailable(f"session store (Redis) not writable: {exc}") from exc
        except redis.ResponseError as exc:
            if "OOM" in str(exc) or "READONLY" in str(exc) or "MISCONF" in str(exc):
                raise StoreUnavailable(f"session store (Redis) not writable: {exc}") from exc
            raise

    # ---- writes -------------------------------------------------------------------------
    def append_events(self, rows: Sequence[EventRow], outbox: bool = True) -> AppendResult:
        if not rows:
            return AppendResult()
        lim = self.limits
        now = self.clock()
        bucket = int(now // self.bucket_s)
        bucket_ttl_ms = int((lim.popularity_window_s + 2 * self.bucket_s) * 1000)
        argv = [self.prefix, repr(now), max(1, int(lim.idle_ttl_s * 1000)), lim.max_events,
                lim.max_user_items, max(1, int(lim.user_ttl_s * 1000)),
                max(1, int(lim.dedupe_ttl_s * 1000)), str(bucket), bucket_ttl_ms,
                "1" if outbox else "0",
                json.dumps([r.to_json() for r in rows], separators=(",", ":")),
                lim.max_user_events, int(lim.max_clock_skew_s * 1000)]
        status = self._call(lambda: self._append(keys=[], args=argv))
        res = AppendResult()
        for i, st in enumerate(status):
            if st == "new":
                res.stored.append(i)
            elif st == "dup":
                res.duplicates.append(i)
            elif st.startswith("skew:"):
                res.rejected.append((i, skew_reason(int(rows[i].ts), int(float(st[5:])),
                                                    lim.max_clock_skew_s) or "ts: clock skew"))
            else:
                res.rejected.append((i, "user_id: the session belongs to another user"))
        return res

    def incr_popularity(self, item_ids: Iterable[str], session_id: str = "backfill") -> None:
        bucket = int(self.clock() // self.bucket_s)
        ttl = int((self.limits.popularity_window_s + 2 * self.bucket_s) * 1000)
        popk = self._k("pop", str(bucket))
        for item in dict.fromkeys(item_ids):
            sk = self._k("pops", f"{bucket}:{item}")
            if self.r.sadd(sk, session_id):
                self.r.zincrby(popk, 1, item)
                self.r.pexpire(sk, ttl)
        self.r.pfadd(self._k("pophll", str(bucket)), session_id)
        self.r.pexpire(popk, ttl)

    # ---- outbox (rayrec.platform.sessions.outbox) ----------------------------------------
    def outbox_pending(self) -> int:
        n = int(self.r.llen(self._k("outbox")))
        for claimant in self.r.hkeys(self._k("claims")):
            n += int(self.r.llen(self._k("claim", claimant)))
        return n

    def _outbox_claim(self, claimant: str, path: str, max_rows: int) -> list[EventRow]:
        meta = json.dumps({"file": path, "at": time.time()})
        raw = self._call(lambda: self._claim(keys=[], args=[self.prefix, claimant, meta,
                                                            int(max_rows)]))
        return [EventRow.from_json(json.loads(x)) for x in raw]

    def _outbox_ack(self, claimant: str) -> None:
        p = self.r.pipeline(transaction=True)
        p.delete(self._k("claim", claimant))
        p.hdel(self._k("claims"), claimant)
        p.execute()

    def _outbox_claims(self) -> list[tuple[str, str, float]]:
        out = []
        for claimant, meta in self.r.hgetall(self._k("claims")).items():
            m = json.loads(meta)
            out.append((claimant, str(m["file"]), float(m["at"])))
        return out

    def _outbox_resolve(self, claimant: str, logged: set[str]) -> None:
        self._call(lambda: self._resolve(keys=[], args=[self.prefix, claimant,
                                                        json.dumps(sorted(logged))]))

    def check_writable(self) -> None:
        self._call(lambda: self.r.set(self._k("probe"), repr(time.time()), px=60_000))

    # ---- reads --------------------------------------------------------------------------
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

    def user_events(self, user_id: str) -> list[SessionEvent]:
        raw = self.r.lrange(self._k("ue", user_id), 0, -1)
        evs = [SessionEvent.from_json(json.loads(x)) for x in raw]
        return sorted(evs, key=lambda e: e.ts)  # stable: equal times keep their arrival order

    def _window_buckets(self) -> list[str]:
        now = self.clock()
        first = int((now - self.limits.popularity_window_s) // self.bucket_s) + 1
        last = int(now // self.bucket_s)
        return [self._k("pop", str(b)) for b in range(first, last + 1)]

    def popular(self, n: int) -> list[tuple[str, float]]:
        if n <= 0:
            return []
        keys = self._window_buckets()
        rows = self.r.zunion(keys, withscores=True) if keys else []
        rows = sorted(((str(i), float(s)) for i, s in rows), key=lambda t: (-t[1], t[0]))
        return rows[:n]

    def window_sessions(self) -> int:
        """Distinct sessions in the window (a HyperLogLog per bucket: ~1% error when large)."""
        keys = [self._k("pophll", k.rsplit(":", 1)[-1]) for k in self._window_buckets()]
        return int(self.r.pfcount(*keys)) if keys else 0

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


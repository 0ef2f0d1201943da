"""Session stores (SQLite and Redis, one parametrized test body) and the event log."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

from rayrec.platform.sessions import (
    EventLog,
    EventRow,
    LogRow,
    SessionEvent,
    SQLiteSessionStore,
    StoreLimits,
    StoreUnavailable,
    check_store_url,
    make_session_store,
    read_event_log,
    validate_id,
)
from tests.fixtures import wait_for

REDIS_URL = "redis://127.0.0.1:6379/15"


def _redis_store(limits: StoreLimits, clock=None):
    redis = pytest.importorskip("redis")
    from rayrec.platform.sessions.redis_sessions import RedisSessionStore

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
    except Exception as exc:
        pytest.skip(f"no Redis server at {REDIS_URL} ({exc}); start redis-server to run this")
    kw = {} if clock is None else {"clock": clock}
    return RedisSessionStore(REDIS_URL, limits, prefix=f"rayrec-test-{uuid.uuid4().hex[:10]}:",
                             **kw)


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    """A factory of fresh stores of one backend (the only two in platform/sessions/: SQLite,
    Redis).  ``clock=`` injects the wall clock (the popularity window; SQLite expiry too)."""
    made = []

    def factory(clock=None, **kw):
        limits = StoreLimits(**kw)
        if request.param == "sqlite":
            s = SQLiteSessionStore(tmp_path / f"s{len(made)}.db", limits,
                                   **({} if clock is None else {"clock": clock}))
        else:
            s = _redis_store(limits, clock)
        made.append(s)
        return s

    factory.backend = request.param

    yield factory
    for s in made:
        if hasattr(s, "delete_prefix"):
            s.delete_prefix()
            assert not list(s.r.scan_iter(match=f"{s.prefix}*"))
        s.close()


def ev(item: str, ts: int = 1_700_000_000_000, event: str = "view", value=None):
    return SessionEvent(item, ts, event, value)


def test_append_get_clear(make_store):
    s = make_store()
    assert s.get("s1") is None
    assert s.append("s1", [ev("a", 1), ev("b", 2, "cart", 3.5)], user_id="u1") == 2
    assert s.append("s1", [ev("c", 3)]) == 3
    st = s.get("s1")
    assert st is not None
    assert st.item_ids == ["a", "b", "c"]
    assert st.user_id == "u1"  # kept when a later append carries no user
    assert st.events[1] == SessionEvent("b", 2, "cart", 3.5)
    assert st.last_ts == 3
    assert s.get("s2") is None
    assert s.clear("s1") is True
    assert s.get("s1") is None
    assert s.clear("s1") is False
    assert s.ping()


def test_bounded_events_and_user_items(make_store):
    s = make_store(max_events=5, max_user_items=3)
    for i in range(12):
        n = s.append("s", [ev(f"i{i}", i)], user_id="u")
    assert n == 5
    assert s.get("s").item_ids == [f"i{i}" for i in range(7, 12)]
    assert s.user_items("u") == ["i11", "i10", "i9"]
    # one batch larger than the bound keeps its newest events
    s.append("t", [ev(f"j{i}", i) for i in range(9)])
    assert s.get("t").item_ids == [f"j{i}" for i in range(4, 9)]


def test_idle_expiry_sqlite_clock(tmp_path):
    """Expiry on the store's clock (no sleeps: a loaded machine cannot make it flaky)."""
    now = [1000.0]
    s = SQLiteSessionStore(tmp_path / "s.db", StoreLimits(idle_ttl_s=1.5), clock=lambda: now[0])
    s.append("s", [ev("a")])
    assert s.get("s") is not None
    now[0] += 0.9
    s.append("s", [ev("b")])  # an append refreshes the idle timer
    now[0] += 0.9
    assert s.get("s").item_ids == ["a", "b"]
    now[0] += 1.7
    assert s.get("s") is None
    s.append("s", [ev("c")])  # a new session under the same id starts empty
    assert s.get("s").item_ids == ["c"]


def test_idle_expiry_redis():
    """Redis expires keys itself: the append refreshes the TTL (read back), and expiry is
    waited for with a deadline, never asserted after a fixed sleep."""
    s = _redis_store(StoreLimits(idle_ttl_s=1.5))
    try:
        s.append("s", [ev("a")])
        first = s.r.pttl(s._k("se", "s"))
        assert 0 < first <= 1500
        wait_for(lambda: s.r.pttl(s._k("se", "s")) < first, 5, "the TTL to run down", 0.05)
        s.append("s", [ev("b")])
        assert s.r.pttl(s._k("se", "s")) > 1400 and s.r.pttl(s._k("sm", "s")) > 1400
        assert s.get("s").item_ids == ["a", "b"]
        wait_for(lambda: s.get("s") is None, 10, "the idle session to expire", 0.1)
        s.append("s", [ev("c")])
        assert s.get("s").item_ids == ["c"]
    finally:
        s.delete_prefix()
        s.close()


def test_popularity_counts_distinct_sessions_in_a_window(make_store):
    """Finding 7: popularity is distinct sessions per item in a window, not raw events."""
    now = [1_000_000.0]
    s = make_store(clock=lambda: now[0], popularity_window_s=600)
    s.append("s1", [ev("a"), ev("b"), ev("a")])
    s.append("s2", [ev("c"), ev("a"), ev("c")])
    s.append("spam", [ev("z")] * 1000)  # one session, a thousand events: counts once
    s.incr_popularity(["b"], session_id="backfill")
    assert s.popular(3) == [("a", 2.0), ("b", 2.0), ("c", 1.0)]
    assert s.popular(1) == [("a", 2.0)]
    assert s.popular(0) == []
    assert dict(s.popular(10))["z"] == 1.0
    assert s.window_sessions() == 4
    now[0] += 1300  # past the window (Redis: past every bucket of it)
    s.append("s3", [ev("c")])
    assert s.popular(5) == [("c", 1.0)]
    assert s.window_sessions() == 1


def test_concurrent_appends_lose_nothing(make_store):
    s = make_store(max_events=1000)

    def worker(w):
        for i in range(20):
            s.append("shared", [ev(f"w{w}-{i}", i)])

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items = s.get("shared").item_ids
    assert len(items) == 80
    for w in range(4):  # each writer's events stay in its order
        mine = [x for x in items if x.startswith(f"w{w}-")]
        assert mine == [f"w{w}-{i}" for i in range(20)]
    assert sum(c for _, c in s.popular(100)) == 80  # 80 distinct items, one session each


def test_sqlite_state_survives_reopen(tmp_path):
    p = tmp_path / "s.db"
    with SQLiteSessionStore(p) as s:
        s.append("s", [ev("a"), ev("b")], user_id="u")
    with make_session_store(f"sqlite://{p}") as s2:
        assert s2.get("s").item_ids == ["a", "b"]
        assert s2.user_items("u") == ["b", "a"]


def test_sqlite_purge_expired(tmp_path):
    now = [1000.0]
    s = SQLiteSessionStore(tmp_path / "s.db", StoreLimits(idle_ttl_s=10), clock=lambda: now[0])
    s.append("old", [ev("a")])
    now[0] += 5
    s.append("new", [ev("b")])
    now[0] += 6
    assert s.purge_expired() == 1
    assert s.get("old") is None and s.get("new").item_ids == ["b"]


@pytest.mark.parametrize(
    "kw",
    [{"idle_ttl_s": 0}, {"max_events": 0}, {"max_user_items": 1.5}, {"user_ttl_s": -1}],
)
def test_limits_validated(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        StoreLimits(**kw)


def test_validate_id():
    assert validate_id("abc-1_2.x:y@z", "item_id") == "abc-1_2.x:y@z"
    for bad in ["", "a b", "../x", "x" * 129, 5, None, "a/b"]:
        with pytest.raises(ValueError, match="item_id"):
            validate_id(bad, "item_id")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_event_log_roundtrip_and_rotation(tmp_path, fmt):
    log = EventLog(tmp_path / "log", format=fmt, rotate_bytes=200, writer_id="w1", fsync=False)
    rows = [LogRow("u1" if i % 2 else None, f"s{i % 3}", f"item{i}", 1_700_000_000_000 + i,
                   "view", None if i % 2 else 1.5) for i in range(30)]
    for i in range(0, 30, 5):
        assert log.append(rows[i:i + 5]) == 5
    log.close()
    files = log.files()
    assert len(files) > 1  # rotated by size
    assert not list((tmp_path / "log").glob("*.inprogress"))
    df = read_event_log(tmp_path / "log")
    assert list(df["item_id"]) == [f"item{i}" for i in range(30)]
    assert list(df["ts"].astype("int64")) == [1_700_000_000_000 + i for i in range(30)]
    assert df["user_id"].isna().sum() == 15
    assert abs(float(df["value"].iloc[0]) - 1.5) < 1e-6


def test_event_log_readable_by_generic_reader(tmp_path):
    from rayrec.platform.preprocessing.readers import read_generic

    log = EventLog(tmp_path, writer_id="w")
    log.append([LogRow("u", "s", "i1", 1_700_000_000_000, "view", None),
                LogRow(None, "s", "i2", 1_700_000_001_000, "cart", 2.0)])
    log.close()
    (path,) = log.files()
    raw = read_generic(path, {c: c for c in ["user_id", "session_id", "item_id", "ts", "event",
                                             "value"]}, ts_format="unix_ms")
    assert len(raw.frame) == 2 and len(raw.rejects) == 0
    assert list(raw.frame["item_id"]) == ["i1", "i2"]


def test_event_log_bad_args(tmp_path):
    with pytest.raises(ValueError, match="format"):
        EventLog(tmp_path, format="json")
    with pytest.raises(ValueError, match="rotate_bytes"):
        EventLog(tmp_path, rotate_bytes=0)


# ---- issue 14: events stored exactly once ---------------------------------------------------
def row(eid, sid, item, user=None, ts=1_700_000_000_000):
    return EventRow(eid, sid, item, ts, user)


def test_append_events_is_idempotent_and_keeps_each_rows_user(make_store, tmp_path):
    """Finding 3: the same event twice is stored once; a retried request is a no-op; a row's
    own user gets its item (not the batch's last user); a session keeps its user."""
    s = make_store()
    rows = [row("e1", "s1", "a", "u1"), row("e2", "s1", "b"), row("e3", "s2", "c", "u2"),
            row("e1", "s1", "a", "u1")]  # the same event twice in one request
    res = s.append_events(rows)
    assert res.stored == [0, 1, 2] and res.duplicates == [3] and res.rejected == []
    again = s.append_events(rows)  # the client's retry
    assert again.stored == [] and again.duplicates == [0, 1, 2, 3]
    assert s.get("s1").item_ids == ["a", "b"] and s.get("s2").item_ids == ["c"]
    assert s.get("s1").user_id == "u1" and s.get("s2").user_id == "u2"
    assert s.user_items("u1") == ["b", "a"] and s.user_items("u2") == ["c"]
    # another user's row into u1's session is refused: it would enter u1's history
    res = s.append_events([row("e4", "s1", "x", "u2"), row("e5", "s2", "y", "u2")])
    assert res.stored == [1] and res.rejected[0][0] == 0 and "user_id" in res.rejected[0][1]
    assert "x" not in s.user_items("u1") and s.get("s1").item_ids == ["a", "b"]
    assert s.outbox_pending() == 4
    log = EventLog(tmp_path / f"log-{make_store.backend}", writer_id="w", fsync=False)
    assert s.drain_outbox(log) == 4 and s.outbox_pending() == 0
    assert s.drain_outbox(log) == 0
    log.close()
    df = read_event_log(tmp_path / f"log-{make_store.backend}")
    assert list(df["event_id"]) == ["e1", "e2", "e3", "e5"]
    assert list(df["user_id"].fillna("")) == ["u1", "", "u2", "u2"]  # each row's own


def test_sqlite_locked_store_commits_nothing_then_retry_lands_once(tmp_path):
    """Finding 3: a locked store raises StoreUnavailable (503), commits nothing and logs
    nothing; the retry stores and logs each event once."""
    s = SQLiteSessionStore(tmp_path / "s.db", busy_timeout_s=0.2)
    log = EventLog(tmp_path / "log", writer_id="w", fsync=False)
    rows = [row(f"e{i}", f"s{i % 3}", f"i{i}") for i in range(9)]
    blocker = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match="not writable"):
            s.append_events(rows)
        with pytest.raises(StoreUnavailable):
            s.check_writable()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert all(s.get(f"s{j}") is None for j in range(3))  # no session partly committed
    assert s.outbox_pending() == 0 and s.drain_outbox(log) == 0
    s.check_writable()
    assert s.append_events(rows).stored == list(range(9))
    assert s.append_events(rows).duplicates == list(range(9))
    assert s.drain_outbox(log) == 9
    log.close()
    assert sorted(read_event_log(tmp_path / "log")["event_id"]) == sorted(r.event_id for r in rows)


_CRASHING_DRAIN = textwrap.dedent(
    """
    import os, sys
    from rayrec.platform.sessions import EventLog, EventRow, make_session_store
    from rayrec.platform.sessions.event_log import EventLog as _Log

    url, log_dir, point, prefix = sys.argv[1:5]
    store = make_session_store(url, prefix=prefix)
    rows = [EventRow(f"e{i}", f"s{i % 4}", f"i{i}", 1_700_000_000_000 + i) for i in range(40)]
    assert store.append_events(rows).stored == list(range(40))
    if point == "after-commit":
        os._exit(3)  # committed, not logged
    real = _Log.append

    def append_then_die(self, rows, path=None):
        n = real(self, rows, path=path)
        os._exit(3)  # logged (fsynced), not acknowledged

    _Log.append = append_then_die
    store.drain_outbox(EventLog(log_dir, writer_id="crashed"))
    """
)


@pytest.mark.parametrize("point", ["after-commit", "after-log-write"])
def test_outbox_crash_loses_and_duplicates_nothing(make_store, tmp_path, point):
    """Finding 3 (crash test): a process killed after the store commit, or after writing the
    log but before acknowledging the outbox: the next drain logs every committed event
    exactly once, and nothing is in the log that is not in the store."""
    s = make_store()
    if make_store.backend == "sqlite":
        url, prefix = f"sqlite://{s.path}", "x"
    else:
        url, prefix = REDIS_URL, s.prefix
    log_dir = tmp_path / "log"
    proc = subprocess.run([sys.executable, "-c", _CRASHING_DRAIN, url, str(log_dir), point,
                           prefix], capture_output=True, timeout=120)
    assert proc.returncode == 3, proc.stderr.decode()[-2000:]
    before = read_event_log(log_dir)
    assert len(before) == (0 if point == "after-commit" else 40)
    log = EventLog(log_dir, writer_id="next", fsync=False)
    assert s.drain_outbox(log) == (40 if point == "after-commit" else 0)
    log.close()
    df = read_event_log(log_dir)
    assert sorted(df["event_id"]) == sorted(f"e{i}" for i in range(40))  # once each
    stored = [it for j in range(4) for it in s.get(f"s{j}").item_ids]
    assert sorted(stored) == sorted(df["item_id"])
    assert s.outbox_pending() == 0


def test_store_urls_are_checked():
    """Finding 9: an unknown scheme is an error, not a relative SQLite file."""
    for bad in ["postgres://h/db", "sqlite:/x", "sqlite://rel.db", "mysql://x", "redis:/x"]:
        with pytest.raises(ValueError, match="session store"):
            check_store_url(bad)
        with pytest.raises(ValueError, match="session store"):
            make_session_store(bad)
    for ok in ["sqlite:///tmp/x.db", "redis://127.0.0.1:6379/0", "/tmp/x.db", "rel/x.db"]:
        assert check_store_url(ok) == ok


def test_ids_with_a_trailing_newline_are_refused():
    """Finding 9: ``re.match`` with ``$`` accepted 'abc\\n'."""
    for bad in ["abc\n", "abc\r\n", "\nabc"]:
        with pytest.raises(ValueError, match="session_id"):
            validate_id(bad, "session_id")


# ---- user events (replayed by models with a user memory, seed 001 section 2.2) -----------


def _reopen(s):
    """The same store's data through a fresh client (a restarted replica)."""
    if isinstance(s, SQLiteSessionStore):
        return SQLiteSessionStore(s.path, s.limits)
    from rayrec.platform.sessions.redis_sessions import RedisSessionStore

    return RedisSessionStore(REDIS_URL, s.limits, prefix=s.prefix)


def test_user_events_span_sessions_are_bounded_and_survive_a_restart(make_store):
    s = make_store(max_user_events=4)
    s.append("s1", [ev("a", 1000), ev("b", 2000, "cart", 2.0)], user_id="u")
    s.append("s2", [ev("c", 3000)], user_id="u")
    s.append("anon", [ev("x", 3500)])
    assert [e.item_id for e in s.user_events("u")] == ["a", "b", "c"]
    assert s.user_events("u")[1] == SessionEvent("b", 2000, "cart", 2.0)
    s.append("s2", [ev("d", 4000), ev("e", 5000)])  # no user_id: the session's user
    assert [e.item_id for e in s.user_events("u")] == ["b", "c", "d", "e"]  # the newest 4
    assert s.user_events("nobody") == []
    again = _reopen(s)
    try:
        assert again.user_events("u") == s.user_events("u")
    finally:
        again.close()


def test_a_row_older_than_its_users_newest_event_by_more_than_the_skew_is_refused(make_store):
    s = make_store(max_clock_skew_s=60)
    t = 1_700_000_000_000
    s.append("s1", [ev("a", t)], user_id="u")
    res = s.append_events([
        EventRow("e1", "s2", "b", t - 30_000, "u"),  # within the skew: stored
        EventRow("e2", "s2", "c", t - 61_000, "u"),  # 61 s older than the user's newest
        EventRow("e3", "s3", "d", t - 3_600_000),  # no user: no check
        EventRow("e4", "s2", "f", t - 61_000),  # the session's user (set by e1)
    ])
    assert res.stored == [0, 2]
    assert [i for i, _ in res.rejected] == [1, 3]
    assert "61 s older than the user's newest event" in res.rejected[0][1]
    assert "max_clock_skew_s=60" in res.rejected[0][1]
    assert [e.item_id for e in s.user_events("u")] == ["b", "a"]  # by time
    assert s.get("s2").item_ids == ["b"]

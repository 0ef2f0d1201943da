"""Session stores (SQLite and Redis, one parametrized test body) and the event log."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from rayrec.platform.sessions import (
    EventLog,
    LogRow,
    SessionEvent,
    SQLiteSessionStore,
    StoreLimits,
    make_session_store,
    read_event_log,
    validate_id,
)

REDIS_URL = "redis://127.0.0.1:6379/15"


def _redis_store(limits: StoreLimits):
    redis = pytest.importorskip("redis")
    from rayrec.platform.sessions.redis_sessions import RedisSessionStore

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
    except Exception as exc:
        pytest.skip(f"no Redis server at {REDIS_URL} ({exc}); start redis-server to run this")
    return RedisSessionStore(REDIS_URL, limits, prefix=f"rayrec-test-{uuid.uuid4().hex[:10]}:")


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    made = []

    def factory(**kw):
        limits = StoreLimits(**kw)
        if request.param == "sqlite":
            s = SQLiteSessionStore(tmp_path / f"s{len(made)}.db", limits)
        else:
            s = _redis_store(limits)
        made.append(s)
        return s

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


def test_idle_expiry(make_store):
    s = make_store(idle_ttl_s=1.5)
    s.append("s", [ev("a")])
    assert s.get("s") is not None
    time.sleep(0.9)
    s.append("s", [ev("b")])  # an append refreshes the idle timer
    time.sleep(0.9)
    assert s.get("s").item_ids == ["a", "b"]
    time.sleep(1.7)
    assert s.get("s") is None
    s.append("s", [ev("c")])  # a new session under the same id starts empty
    assert s.get("s").item_ids == ["c"]


def test_popularity_counters(make_store):
    s = make_store()
    s.append("s1", [ev("a"), ev("b"), ev("a")])
    s.append("s2", [ev("c"), ev("a"), ev("c")])
    s.incr_popularity(["b"])
    assert s.popular(3) == [("a", 3.0), ("b", 2.0), ("c", 2.0)]
    assert s.popular(1) == [("a", 3.0)]
    assert s.popular(0) == []


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
    assert sum(c for _, c in s.popular(100)) == 80


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

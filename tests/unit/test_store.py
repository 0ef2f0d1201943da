"""Versioned recommendation store (seed 000, section 5): versions, rollback, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from rayrec.platform.store import RecommendationStore, SQLiteRecommendationStore
from tests.fixtures import wait_for


def rows_for(tag: str, n: int = 50, k: int = 3):
    """Users u0..u{n-1}; every item names the version so mixed reads are detectable."""
    for u in range(n):
        yield f"u{u}", [f"{tag}:{u}:{j}" for j in range(k)], [1.0 - 0.1 * j for j in range(k)]


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteRecommendationStore(tmp_path / "recs.db", keep_versions=3)
    yield s
    s.close()


def test_publish_get_versions(store: SQLiteRecommendationStore) -> None:
    assert isinstance(store, RecommendationStore)
    assert store.current() is None and store.get("u1") is None and store.versions() == []
    assert store.publish("v1", "2024-01-01", "m1", rows_for("v1")) == "v1"
    cur = store.current()
    assert cur.version == "v1" and cur.complete and cur.is_current and cur.n_rows == 50
    r = store.get("u7")
    assert r.items == ["v1:7:0", "v1:7:1", "v1:7:2"] and r.scores == [1.0, 0.9, 0.8]
    assert r.version == "v1" and store.get("nobody") is None
    store.publish("v2", "2024-01-02", "m1", rows_for("v2"))
    assert store.get("u7").items[0] == "v2:7:0"
    assert store.get("u7", version="v1").items[0] == "v1:7:0"  # older version on demand
    assert [v.version for v in store.versions()] == ["v1", "v2"]
    assert [v.is_current for v in store.versions()] == [False, True]
    many = store.get_many(["u1", "u2", "ghost"])
    assert set(many) == {"u1", "u2"} and {r.version for r in many.values()} == {"v2"}
    with pytest.raises(KeyError, match="v9"):
        store.get("u1", version="v9")


def test_idempotent_republish(store: SQLiteRecommendationStore) -> None:
    store.publish("v1", "2024-01-01", "m1", rows_for("v1"))
    consumed = []

    def spy():
        for row in rows_for("again"):
            consumed.append(row)
            yield row

    assert store.publish("v1", "2024-01-01", "m1", spy()) == "v1"
    assert store.publish("v1-retry", "2024-01-01", "m1", spy()) == "v1"
    assert consumed == []  # rows never read, nothing duplicated
    assert [v.version for v in store.versions(include_incomplete=True)] == ["v1"]
    assert store.get("u3").items[0] == "v1:3:0"
    with pytest.raises(ValueError, match="already holds"):
        store.publish("v1", "2024-01-02", "m2", rows_for("x"))


def test_rollback(store: SQLiteRecommendationStore) -> None:
    with pytest.raises(ValueError, match="nothing to roll back"):
        store.rollback()
    for i in (1, 2, 3):
        store.publish(f"v{i}", f"2024-01-0{i}", "m1", rows_for(f"v{i}"))
    assert store.rollback().version == "v2"
    assert store.current().version == "v2" and store.get("u0").version == "v2"
    assert store.rollback().version == "v1"
    with pytest.raises(ValueError, match="older"):
        store.rollback()
    assert store.rollback("v3").version == "v3"
    with pytest.raises(KeyError, match="nope"):
        store.rollback("nope")
    # a retried publish of the rolled-back day does not undo the rollback
    store.rollback("v2")
    assert store.publish("v3", "2024-01-03", "m1", rows_for("v3")) == "v3"
    assert store.current().version == "v2"


def test_pruning_keeps_last_and_current(tmp_path: Path) -> None:
    s = SQLiteRecommendationStore(tmp_path / "p.db", keep_versions=2)
    for i in range(1, 6):
        s.publish(f"v{i}", f"2024-01-0{i}", "m1", rows_for(f"v{i}", n=10))
    assert [v.version for v in s.versions()] == ["v4", "v5"]
    with sqlite3.connect(tmp_path / "p.db") as raw:  # pruned rows are gone too
        assert raw.execute("SELECT COUNT(*) FROM recs").fetchone()[0] == 20
    s.rollback()  # current = v4
    assert s.keep_last(1) == []  # v5 is newest, v4 is current: both stay
    s.publish("v6", "2024-01-06", "m1", rows_for("v6", n=10))
    assert [v.version for v in s.versions()] == ["v5", "v6"]
    with pytest.raises(ValueError, match="keep_versions"):
        SQLiteRecommendationStore(tmp_path / "q.db", keep_versions=0)
    s.close()


def test_bad_rows_leave_no_trace(store: SQLiteRecommendationStore) -> None:
    store.publish("v1", "2024-01-01", "m1", rows_for("v1"))
    dup = list(rows_for("v2", n=5)) + [("u2", ["x"], [0.5])]
    with pytest.raises(ValueError, match="u2"):
        store.publish("v2", "2024-01-02", "m1", dup)
    with pytest.raises(ValueError, match="2 items but 1 scores"):
        store.publish("v2", "2024-01-02", "m1", [("u1", ["a", "b"], [1.0])])
    with pytest.raises(ValueError, match="as_of"):
        store.publish("v2", "", "m1", [])

    def boom():
        yield from rows_for("v2", n=3)
        raise RuntimeError("upstream failed")

    with pytest.raises(RuntimeError, match="upstream"):
        store.publish("v2", "2024-01-02", "m1", boom())
    assert [v.version for v in store.versions(include_incomplete=True)] == ["v1"]
    assert store.current().version == "v1"


_SLOW_PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from rayrec.platform.store import SQLiteRecommendationStore

    store = SQLiteRecommendationStore(sys.argv[1], batch_size=2000)

    def rows():
        for u in range(200_000):
            if u % 2000 == 0:
                time.sleep(0.02)
            yield f"u{u}", [f"crashed:{u}"], [1.0]

    store.publish("crashed", "2024-01-02", "m1", rows())
    print("FINISHED", flush=True)
    """
)


def test_killed_publish_leaves_previous_version(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    store = SQLiteRecommendationStore(db)
    store.publish("v1", "2024-01-01", "m1", rows_for("v1", n=100))
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PUBLISHER, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        with sqlite3.connect(db, timeout=30) as raw:

            def written() -> int:
                assert proc.poll() is None, proc.communicate()  # still publishing
                return raw.execute(
                    "SELECT COUNT(*) FROM recs JOIN versions USING (seq) "
                    "WHERE versions.version = 'crashed'"
                ).fetchone()[0] >= 10_000

            wait_for(written, 60, "the publisher to write 10,000 rows", every=0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL and b"FINISHED" not in out
    # readers: still v1, complete, never the crashed rows
    cur = store.current()
    assert cur.version == "v1" and cur.complete and cur.n_rows == 100
    assert store.get("u5").items == ["v1:5:0", "v1:5:1", "v1:5:2"]
    assert store.get("u150") is None  # only the crashed version had it
    assert [v.version for v in store.versions()] == ["v1"]
    left = [v for v in store.versions(include_incomplete=True) if not v.complete]
    assert [v.version for v in left] == ["crashed"]
    with pytest.raises(KeyError):
        store.get("u5", version="crashed")
    # the next publish cleans the incomplete version up
    store.publish("v2", "2024-01-03", "m1", rows_for("v2", n=10))
    assert [v.version for v in store.versions(include_incomplete=True)] == ["v1", "v2"]
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT COUNT(*) FROM recs").fetchone()[0] == 110
    store.close()


def test_readers_never_see_a_mixed_version(tmp_path: Path) -> None:
    db = tmp_path / "mix.db"
    writer = SQLiteRecommendationStore(db, keep_versions=2, batch_size=50)
    writer.publish("v0", "day0", "m1", rows_for("v0", n=400))
    users = [f"u{u}" for u in range(0, 400, 7)]
    reader = SQLiteRecommendationStore(db)
    stop = threading.Event()
    seen: list[str] = []
    errors: list[str] = []

    def poll() -> None:
        while not stop.is_set():
            got = reader.get_many(users)
            versions = {r.version for r in got.values()}
            if len(got) != len(users) or len(versions) != 1:
                errors.append(f"incomplete/mixed read: {len(got)} users, {versions}")
                continue
            (v,) = versions
            if any(not it.startswith(f"{v}:") for r in got.values() for it in r.items):
                errors.append(f"items from another version under {v}")
            if not seen or seen[-1] != v:
                seen.append(v)
            single = reader.get(users[0])
            if single is None:
                errors.append("current version vanished")

    t = threading.Thread(target=poll)
    t.start()
    try:
        # each publish waits until the reader has read the version before it (a condition
        # with a deadline, not a sleep: a loaded machine only makes it slower)
        for i in range(1, 5):
            wait_for(lambda v=f"v{i - 1}": seen and seen[-1] == v, 60,
                     f"the reader to see v{i - 1}", every=0.01)
            writer.publish(f"v{i}", f"day{i}", "m1", rows_for(f"v{i}", n=400))
        wait_for(lambda: seen and seen[-1] == "v4", 60, "the reader to see v4", every=0.01)
    finally:
        stop.set()
        t.join(timeout=10)
    assert errors == []
    assert seen == ["v0", "v1", "v2", "v3", "v4"]  # every switch seen, only forward
    assert [v.version for v in writer.versions()] == ["v3", "v4"]
    writer.close()
    reader.close()


def test_backfill_is_stored_listed_and_readable_but_never_moves_current(store) -> None:
    """Issue 15 finding 5: a backfill (an as-of older than the current one) must not move the
    served version back in time; it stays listed and readable by name, and a rollback from a
    newer version skips it (it was never served)."""
    store.publish("sep", "2016-09-01", "m", rows_for("sep"))
    assert store.publish("jan", "2016-01-01", "m", rows_for("jan"), make_current=False) == "jan"
    assert store.current().version == "sep"
    assert store.get("u3").version == "sep" and store.get("u3").items[0].startswith("sep:")
    assert store.get("u3", version="jan").items[0] == "jan:3:0"
    info = {v.version: v for v in store.versions()}
    assert set(info) == {"sep", "jan"} and info["jan"].backfill and not info["sep"].backfill
    assert info["jan"].complete and info["jan"].n_rows == 50 and not info["jan"].is_current
    # idempotent: the same (as_of, model_version) again returns it, still not current
    assert store.publish("jan2", "2016-01-01", "m", rows_for("x"), make_current=False) == "jan"
    store.publish("oct", "2016-10-01", "m", rows_for("oct"))
    assert store.rollback().version == "sep"  # not the backfill published in between
    with SQLiteRecommendationStore(store.path, create=False) as reader:  # readers see the flag
        assert [v.backfill for v in reader.versions()] == [False, True, False]

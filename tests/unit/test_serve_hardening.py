"""Issue 14, the Serve-free parts: one model version per rollout (build_app), no secret in
what Serve ships, a missing daily store is an error naming the path, checked store URLs,
token hashes and scopes, online popularity that one session cannot move.  (Over HTTP:
tests/integration/test_serve_app.py.)"""

from __future__ import annotations

import os
import pickle
import time

import pytest
import torch
from ray import cloudpickle

from rayrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from rayrec.platform.checkpoint import save_checkpoint
from rayrec.platform.sessions import EventRow, SQLiteSessionStore
from rayrec.platform.store import SQLiteRecommendationStore
from rayrec.serve_apps import policy
from rayrec.serve_apps.auth import TokenTable, hash_token, route_scope, verify_token
from rayrec.serve_apps.config import RecommenderArgs
from rayrec.serve_apps.deployments import DailyRecommender, SessionRecommender
from rayrec.serve_apps.policy import ItemCatalog
from rayrec.serve_apps.scoring import Popularity

ITEMS = [f"i{j}" for j in range(50)]
SECRET = "s3cret-admin-token-" + "x" * 20


def _ckpt(path, seed=0):
    torch.manual_seed(seed)
    cfg = GRU4RecConfig(layers=(8,))
    save_checkpoint(path, GRU4Rec(cfg, len(ITEMS)).state_dict(),
                    {"model": cfg.model_dump(mode="json")}, ITEMS)


@pytest.fixture
def world(tmp_path):
    md = tmp_path / "models"
    _ckpt(md / "old", 0)
    _ckpt(md / "new", 1)
    t = time.time()
    os.utime(md / "old", (t - 100, t - 100))
    os.utime(md / "new", (t - 50, t - 50))
    store = SQLiteRecommendationStore(tmp_path / "recs.db")
    store.publish("v1", "2026-01-01", "d", [("u1", ITEMS[:5], [1.0] * 5)])
    store.close()
    return tmp_path


def _args(root, **kw):
    base = {"session": {"model_dir": str(root / "models"), "model": "latest",
                        "store": f"sqlite://{root / 'sessions.db'}", "replicas": 2},
            "daily": {"store_path": str(root / "recs.db")},
            "events": {"log_dir": str(root / "events")}}
    base.update(kw)
    return RecommenderArgs(**base)


def _deployments(app):
    ingress = app._bound_deployment
    session, daily, args = ingress.init_args
    return ingress, session._bound_deployment, daily._bound_deployment, args


# ---- finding 2: latest resolved once per rollout --------------------------------------------
def test_latest_is_resolved_once_at_build_and_handed_over_in_user_config(world):
    from rayrec.serve_apps.app import build_app

    _, session, _, _ = _deployments(build_app(_args(world)))
    assert session.user_config == {"model_version": "new"}
    # a newer checkpoint after the build changes nothing for this rollout's replicas
    _ckpt(world / "models" / "newer", 2)
    assert session.user_config == {"model_version": "new"}
    _, session2, _, _ = _deployments(build_app(_args(world)))  # the next rollout picks it up
    assert session2.user_config == {"model_version": "newer"}


def test_a_replica_never_resolves_latest_itself(world):
    rec = SessionRecommender(_args(world))
    with pytest.raises(ValueError, match="latest"):
        rec.reconfigure({"model_version": "latest"})
    with pytest.raises(ValueError, match="model_version"):
        rec.reconfigure({})
    rec.reconfigure({"model_version": "old"})
    info = rec.versions()
    assert info.name == "old" and not hasattr(info, "path")  # no absolute path (finding 9)
    assert rec.ready() == []


# ---- finding 6: no token in what Serve ships -------------------------------------------------
def test_admin_token_never_in_runtime_env_or_args(world, monkeypatch):
    from rayrec.serve_apps.app import build_app

    monkeypatch.setenv("RAYREC_ADMIN_TOKEN", SECRET)
    ingress, session, daily, args = _deployments(build_app(_args(world)))
    for dep in (ingress, session, daily):
        assert SECRET not in repr(dep.ray_actor_options)
        assert SECRET.encode() not in cloudpickle.dumps(dep.init_args)
    assert SECRET.encode() not in pickle.dumps(args.model_dump())
    assert verify_token(SECRET, args.admin.token_hash)
    assert not verify_token(SECRET + "x", args.admin.token_hash)
    assert session.init_args[0].admin.token_hash is None  # only the ingress gets the hash


def test_token_hashes_and_scopes():
    h = hash_token("tok")
    assert h.startswith("sha256$") and "tok" not in h.split("$", 1)[1]
    assert verify_token("tok", h) and not verify_token("tok2", h) and not verify_token("", h)
    assert hash_token("tok") != h  # salted
    table = TokenTable([("r", hash_token("r-tok"), ["read"]), ("w", h, ["read", "write"])])
    assert table.scopes_of("r-tok") == {"read"} and table.scopes_of("tok") == {"read", "write"}
    assert table.scopes_of("nope") is None and table.scopes_of(None) is None
    with pytest.raises(ValueError, match="never put a plain token"):
        TokenTable([("plain", "tok", ["read"])])
    with pytest.raises(ValueError, match="scope"):
        TokenTable([("x", h, ["root"])])
    assert route_scope("GET", "/health") is None and route_scope("HEAD", "/ready") is None
    assert route_scope("GET", "/sessions/a/recommendations") == "read"
    assert route_scope("POST", "/events") == "write"
    assert route_scope("DELETE", "/sessions/a") == "write"
    assert route_scope("POST", "/admin/rollback") == "admin"
    with pytest.raises(ValueError, match="auth.enabled"):
        RecommenderArgs(session={"model_dir": "m"}, auth={"enabled": True})
    with pytest.raises(ValueError, match="sha256"):
        RecommenderArgs(session={"model_dir": "m"}, admin={"token_hash": SECRET})


# ---- finding 5: a missing daily store is an error naming the path -----------------------------
def test_missing_daily_store_fails_at_build_and_start_unless_optional(world):
    from rayrec.serve_apps.app import build_app

    missing = world / "nope" / "recs.sqlite"
    args = _args(world, daily={"store_path": str(missing)})
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_app(args)
    with pytest.raises(FileNotFoundError, match="recs.sqlite"):
        DailyRecommender(args)
    assert not missing.exists() and not missing.parent.exists()  # nothing created
    opt = _args(world, daily={"store_path": str(missing), "optional": True})
    build_app(opt)
    d = DailyRecommender(opt)
    assert d.get("u1") is None and d.ready() == []
    # it appears later: served without a restart
    s = SQLiteRecommendationStore(missing)
    s.publish("v1", "2026-01-01", "d", [("u1", ITEMS[:3], [1.0] * 3)])
    assert d.get("u1").items == ITEMS[:3] and d.ready() == []


def test_vanished_daily_store_answers_503_with_reason(world):
    d = DailyRecommender(_args(world))
    assert d.get("u1").version == "v1" and d.ready() == []
    (world / "recs.db").rename(world / "moved.db")
    r = d.get("u1")
    assert r.status == 503 and "recs.db" in r.reason and str(world) not in r.reason
    assert "recs.db" in d.ready()[0]
    assert d.reload().status == 503 and d.rollback(None).status == 503
    assert not (world / "recs.db").exists()  # never re-created empty
    (world / "moved.db").rename(world / "recs.db")
    assert d.get("u1").version == "v1" and d.ready() == []


def test_reader_store_is_never_created(tmp_path):
    with pytest.raises(FileNotFoundError, match="x.db"):
        SQLiteRecommendationStore(tmp_path / "x.db", create=False)
    assert not (tmp_path / "x.db").exists()
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="not a recommendation store"):
        SQLiteRecommendationStore(tmp_path / "empty.db", create=False)


# ---- finding 9: store URLs checked at config time --------------------------------------------
@pytest.mark.parametrize("url", ["postgres://h/db", "sqlite:/x", "sqlite://rel.db"])
def test_unknown_session_store_scheme_is_a_config_error(url):
    with pytest.raises(ValueError, match="session store"):
        RecommenderArgs(session={"model_dir": "m", "store": url})


# ---- finding 7: online popularity --------------------------------------------------------------
def test_one_session_cannot_make_an_item_popular(tmp_path):
    """1,000 events of the least popular item from one session leave the fallback alone;
    many distinct sessions move it up, blended with (not replacing) training popularity."""
    cat = ItemCatalog(ITEMS)
    store = SQLiteSessionStore(tmp_path / "s.db")
    last = ITEMS[-1]
    store.append_events([EventRow(f"e{j}", "spam", last, 1_700_000_000_000 + j)
                         for j in range(1000)])
    pop = Popularity(cat, store, refresh_s=0.0, min_sessions=5)
    assert pop.order()[0] == 0 and list(pop.order()[:5]) == [0, 1, 2, 3, 4]
    store.append_events([EventRow(f"x{j}", f"s{j}", last, 1_700_000_000_000) for j in range(30)])
    order = list(pop.order())
    assert order[0] == len(ITEMS) - 1 and order[1:4] == [0, 1, 2]
    # the blend: a weight of 0 is the training order whatever the counts
    assert list(policy.blended_popularity(5, [(4, 100.0)], 100, weight=0.0)) == [0, 1, 2, 3, 4]
    assert list(policy.blended_popularity(5, [(4, 100.0)], 3, min_sessions=5)) == [0, 1, 2, 3, 4]
    assert list(policy.blended_popularity(5, [(4, 100.0)], 100, weight=0.5))[0] == 4


# ---- benchmark: a session is encoded once per new event ------------------------------------
def test_session_encoding_cached_per_stored_version(world):
    from rayrec.serve_apps.messages import ScoreRequest
    from rayrec.serve_apps.scoring import SessionModel

    sm = SessionModel(world / "models" / "old")
    req = ScoreRequest(ITEMS[:4], 5, [], cache_key="s1:4:1.0:4")
    first = sm.score_batch([req])[0]
    assert sm.cache_hits == 0
    again = sm.score_batch([req, ScoreRequest(ITEMS[:3], 5, [], cache_key="s2:3:1.0:3")])
    assert sm.cache_hits == 1 and again[0].items == first.items
    # a new event is a new key: encoded afresh, and the answer follows the new events
    newer = ScoreRequest(ITEMS[:5], 5, [], cache_key="s1:5:2.0:5")
    (fresh,) = sm.score_batch([newer])
    (uncached,) = sm.score_batch([ScoreRequest(ITEMS[:5], 5, [])])
    assert sm.cache_hits == 1 and fresh.items == uncached.items


def test_daily_backfill_is_listed_but_not_served(world):
    """Issue 15 finding 5, serving side: a backfilled (older as-of) version is listed by
    ``/versions`` with ``backfill`` while the current version keeps serving."""
    with SQLiteRecommendationStore(world / "recs.db") as store:
        store.publish("old", "2025-06-01", "d", [("u1", ITEMS[10:15], [1.0] * 5)], make_current=False)
    d = DailyRecommender(_args(world))
    assert d.get("u1").version == "v1" and d.get("u1").items == ITEMS[:5]
    v = d.versions()
    assert v.current == "v1"
    assert [(x.version, x.backfill, x.is_current) for x in v.versions] == [("v1", False, True),
                                                                           ("old", True, False)]

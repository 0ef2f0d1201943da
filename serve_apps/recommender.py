"""The online recommender: a Ray Serve application (issue 5).

Request flow (each box a deployment; arrows are ``DeploymentHandle`` calls)::

    HTTP (127.0.0.1) --> Ingress (FastAPI, OpenAPI at /docs)
                           |  POST /events: validate each row -> SessionStore.append
                           |                (session events, user's items, popularity)
                           |                -> EventLog.append (durable, canonical schema)
                           |  GET  /sessions/{id}/recommendations:
                           |       SessionStore.get -> SessionRecommender.recommend
                           |  GET  /users/{id}/recommendations[?session_id=]:
                           |       DailyRecommender.get  (+ SessionRecommender for the live
                           |       session) -> filters -> blend -> popularity fill
                           |  POST /recommendations (stateless: items in the request)
                           |  GET /versions, GET /health, GET /noop, POST /admin/{reload,rollback}
                           v
            SessionRecommender (GRU4Rec checkpoint, @serve.batch, @serve.multiplexed,
                                user_config rollout, autoscaling, check_health)
            DailyRecommender   (SQLiteRecommendationStore: current version on every read)

* Session state lives in a :class:`~rayrec.platform.sessions.SessionStore` (SQLite file by
  default, Redis for several nodes), never in replica memory: any replica serves any session
  and a replica restart loses nothing.
* The session recommender rebuilds the GRU hidden state from the session's stored events and
  scores every item (seed 003 section 3), so it needs no per-session memory either.
* The daily recommender reads the recommendations the daily job published (seed 000 section
  5); a newly published version is seen on the next request, without a restart.
* The blender is :func:`rayrec.serve_apps.core.blend`, called inside the ingress: merging two
  lists of K ids costs microseconds, a separate deployment would add a hop to every call.

Run it::

    serve run serve_apps/configs/recommender.yaml      # or: serve deploy ... (a running cluster)
    # or from Python:  serve.run(build_app(RecommenderArgs(model_dir=..., model=...)))

Admin endpoints need the token from the environment variable named by ``admin_token_env``
(default ``RAYREC_ADMIN_TOKEN``) in the process that builds the app; it is forwarded to the
ingress replicas through their runtime environment.  Without it the admin endpoints answer 403.
"""

# No `from __future__ import annotations`: Serve rebuilds the FastAPI routes of the class
# ingress in the replica, where string annotations of the request models do not resolve.

import asyncio
import hmac
import json
import os
import time
from typing import Any, Literal

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ray import serve
from rayrec.serve_apps.core import (
    ItemCatalog,
    ModelNameError,
    Popularity,
    ScoreRequest,
    SessionModel,
    blend,
    resolve_model_name,
    resolve_model_path,
)

from rayrec.platform.config import StrictModel
from rayrec.platform.sessions import (
    EventLog,
    LogRow,
    SessionEvent,
    StoreLimits,
    make_session_store,
    validate_id,
)

__all__ = ["RecommenderArgs", "build_app", "demo_request"]

try:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    _REPLICA_GONE: tuple[type[BaseException], ...] = (
        RayActorError, ActorDiedError, ActorUnavailableError)
except ImportError:  # pragma: no cover - older Ray
    from ray.exceptions import RayActorError

    _REPLICA_GONE = (RayActorError,)

HARD_MAX_K = 1000
HARD_MAX_LIST = 10_000
ID_REGEX = r"^[A-Za-z0-9_.:@+=-]{1,128}$"


# ---- configuration ---------------------------------------------------------------------
class RecommenderArgs(StrictModel):
    """Typed arguments of :func:`build_app` (``args:`` in the Serve config YAML)."""

    model_dir: str
    """Directory holding model checkpoints (one sub-directory each); model names used for
    multiplexing and rollouts must be directories inside it."""
    model: str = "latest"
    """Default session model: a checkpoint directory name inside ``model_dir``, or
    ``latest`` (the newest checkpoint there, resolved when a replica loads)."""
    store_path: str | None = None
    """SQLite file of the daily recommendation store (None: no daily recommender data)."""
    session_store: str = "sqlite:///tmp/rayrec/sessions.db"
    """``sqlite:///abs/path.db`` or ``redis://127.0.0.1:6379/0``."""
    session_key_prefix: str = "rayrec:"
    event_log_dir: str | None = "/tmp/rayrec/events"
    event_log_format: Literal["csv", "parquet"] = "csv"
    event_log_rotate_bytes: int = Field(64 << 20, ge=1024)
    item_metadata: str | None = None
    """CSV/Parquet with columns item_id, category (for the category filters)."""
    idle_ttl_s: float = Field(1800.0, gt=0)
    max_session_events: int = Field(200, ge=1, le=10_000)
    max_user_items: int = Field(500, ge=1)
    default_k: int = Field(20, ge=1, le=HARD_MAX_K)
    max_k: int = Field(100, ge=1, le=HARD_MAX_K)
    max_events_per_request: int = Field(1000, ge=1, le=HARD_MAX_LIST)
    max_items_per_request: int = Field(500, ge=1, le=HARD_MAX_LIST)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    blend_policy: Literal["interleave", "weighted", "session_first", "daily_first"] = "interleave"
    session_weight: float = Field(0.5, ge=0.0, le=1.0)
    exclude_consumed: bool = True
    popularity_refresh_s: float = Field(5.0, gt=0)
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.0, ge=0)
    """0: a batch is whatever queued while the previous one ran (no added wait at low load)."""
    session_replicas: int | None = Field(None, ge=1)
    """Fixed replica count of the session recommender; None = ``autoscaling``."""
    autoscaling: dict[str, Any] = Field(
        default_factory=lambda: {"min_replicas": 1, "max_replicas": 2,
                                 "target_ongoing_requests": 16}
    )
    session_num_cpus: float = Field(0.5, ge=0)
    ingress_num_cpus: float = Field(0.5, ge=0)
    daily_num_cpus: float = Field(0.25, ge=0)
    ingress_replicas: int = Field(1, ge=1)
    health_check_period_s: float = Field(5.0, gt=0)
    health_check_timeout_s: float = Field(10.0, gt=0)
    torch_threads: int = Field(1, ge=1)
    admin_token_env: str = "RAYREC_ADMIN_TOKEN"
    replica_env: dict[str, str] = Field(
        default_factory=lambda: {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    )
    """Environment of every replica (runtime_env env_vars).  The default runs user code on
    the replica's event loop instead of a separate thread: one thread hop less per call,
    which matters for the two-hop session path (see benchmarks/serve_load.py)."""

    @field_validator("model")
    @classmethod
    def _model_name(cls, v: str) -> str:
        if "/" in v or ".." in v or not v.strip():
            raise ValueError(f"model must be a directory name inside model_dir, got {v!r}")
        return v


def _limits(a: RecommenderArgs) -> StoreLimits:
    return StoreLimits(idle_ttl_s=a.idle_ttl_s, max_events=a.max_session_events,
                       max_user_items=a.max_user_items)


# ---- request / response models ---------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EventIn(_Strict):
    """One event row (canonical columns); ``ts`` in unix milliseconds (default: now)."""

    session_id: str = Field(pattern=ID_REGEX)
    item_id: str = Field(pattern=ID_REGEX)
    user_id: str | None = Field(None, pattern=ID_REGEX)
    ts: int | None = Field(None, ge=631_152_000_000, le=4_102_444_800_000)
    event: str = Field("view", pattern=r"^[a-z_]{1,32}$")
    value: float | None = Field(None, allow_inf_nan=False)


class EventsIn(_Strict):
    """A batch of events. Each row is validated on its own (schema: ``EventIn``); invalid
    rows are rejected with a reason while the valid ones are accepted."""

    events: list[Any] = Field(max_length=HARD_MAX_LIST)


class Rejected(_Strict):
    index: int
    reason: str


class EventsOut(_Strict):
    accepted: int
    rejected: int
    errors: list[Rejected]
    sessions: int


class RecOptions(_Strict):
    k: int | None = Field(None, ge=1, le=HARD_MAX_K)
    exclude_consumed: bool | None = None
    include_categories: list[str] = Field(default_factory=list, max_length=100)
    exclude_categories: list[str] = Field(default_factory=list, max_length=100)
    exclude_items: list[str] = Field(default_factory=list, max_length=HARD_MAX_LIST)
    model: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}$")


class StatelessIn(RecOptions):
    items: list[str] = Field(max_length=HARD_MAX_LIST)
    strict_items: bool = False
    """Reject (404) when an item is not in the model's catalogue instead of ignoring it."""


class RecsOut(_Strict):
    items: list[str]
    scores: list[float]
    source: str
    model: str | None = None
    store_version: str | None = None
    session_events: int = 0
    seconds_since_last_event: float | None = None
    unknown_items: int = 0


class RollbackIn(_Strict):
    to_version: str | None = Field(None, pattern=ID_REGEX)


# ---- deployments -----------------------------------------------------------------------
class SessionRecommender:
    """Scores sessions with a GRU4Rec checkpoint (see the module docstring)."""

    def __init__(self, args: dict) -> None:
        self.args = RecommenderArgs(**args)
        torch.set_num_threads(self.args.torch_threads)
        self.categories = ItemCatalog.read_metadata(self.args.item_metadata)
        self.store = make_session_store(self.args.session_store, _limits(self.args),
                                        self.args.session_key_prefix)
        # The model comes from user_config (Serve calls reconfigure right after __init__),
        # so a rollout changes user_config only and is applied in place.
        self.default: SessionModel | None = None
        self.pop: Popularity | None = None
        self._score.set_max_batch_size(self.args.max_batch_size)
        self._score.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)

    def _load(self, name: str) -> SessionModel:
        name = resolve_model_name(self.args.model_dir, name)
        path = resolve_model_path(self.args.model_dir, name)
        return SessionModel(path, name=name, categories=self.categories)

    def reconfigure(self, user_config: dict) -> None:
        """``user_config: {model_version: <name in model_dir>}`` rolls a new model out in
        place (the old model keeps serving until the new one has loaded)."""
        name = (user_config or {}).get("model_version")
        if name:
            name = resolve_model_name(self.args.model_dir, name)
        if name and (self.default is None or name != self.default.name):
            new = self._load(name)
            self.default = new
            self.pop = Popularity(new.catalog, self.store, self.args.popularity_refresh_s)

    @serve.multiplexed(max_num_models_per_replica=3)
    async def get_model(self, model_id: str) -> SessionModel:
        return await asyncio.to_thread(self._load, model_id)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _score(self, batch: list[tuple[SessionModel, ScoreRequest]]) -> list[dict]:
        out: list[dict | None] = [None] * len(batch)
        groups: dict[int, list[int]] = {}
        for i, (m, _) in enumerate(batch):
            groups.setdefault(id(m), []).append(i)
        for idxs in groups.values():
            model = batch[idxs[0]][0]
            try:
                res = model.score_batch([batch[i][1] for i in idxs],
                                        self.pop if model is self.default else None)
                for i, r in zip(idxs, res):
                    out[i] = {"items": r.items, "scores": r.scores, "source": r.source,
                              "unknown_items": r.unknown_items, "model": model.name}
            except ValueError as exc:  # a bad filter: answer that request only
                for i in idxs:
                    out[i] = {"error": str(exc)}
        return out  # type: ignore[return-value]

    async def recommend(self, req: dict) -> dict:
        if self.default is None:  # deployed without user_config
            self.reconfigure({"model_version": self.args.model})
        model_id = serve.get_multiplexed_model_id()
        try:
            model = self.default if not model_id or model_id == self.default.name \
                else await self.get_model(model_id)
        except (ModelNameError, FileNotFoundError) as exc:
            return {"error": str(exc), "status": 404}
        cat = model.catalog
        try:
            cat.check_categories(req["include_categories"], "include_categories")
            cat.check_categories(req["exclude_categories"], "exclude_categories")
        except ValueError as exc:
            return {"error": str(exc), "status": 422}
        if req.get("strict_items"):
            unknown = [i for i in req["items"] if i not in cat.index]
            if unknown:
                return {"error": f"items: unknown item id(s) {unknown[:5]}", "status": 404}
        sr = ScoreRequest(req["items"], int(req["k"]), req["exclude"],
                          req["include_categories"], req["exclude_categories"])
        return await self._score((model, sr))

    def versions(self) -> dict:
        if self.default is None:
            self.reconfigure({"model_version": self.args.model})
        return self.default.info()

    def check_health(self) -> None:
        if not self.store.ping():
            raise RuntimeError("session store unreachable")


class DailyRecommender:
    """Reads the daily job's published recommendations (current version on every read)."""

    def __init__(self, args: dict) -> None:
        self.args = RecommenderArgs(**args)
        self.store = None
        if self.args.store_path:
            from rayrec.platform.store import SQLiteRecommendationStore

            self.store = SQLiteRecommendationStore(self.args.store_path)

    def get(self, user_id: str) -> dict | None:
        if self.store is None:
            return None
        r = self.store.get(user_id)
        if r is None:
            return None
        return {"items": list(r.items), "scores": [float(s) for s in r.scores],
                "version": r.version}

    def versions(self) -> dict:
        if self.store is None:
            return {"current": None, "versions": []}
        cur = self.store.current()
        return {"current": None if cur is None else cur.version,
                "versions": [
                    {"version": v.version, "as_of": v.as_of, "model_version": v.model_version,
                     "n_rows": v.n_rows, "is_current": v.is_current}
                    for v in self.store.versions()]}

    def rollback(self, to_version: str | None) -> dict:
        if self.store is None:
            return {"error": "no recommendation store configured", "status": 404}
        try:
            v = self.store.rollback(to_version)
        except (ValueError, KeyError, LookupError) as exc:
            return {"error": str(exc), "status": 404}
        return {"current": v.version}

    def reload(self) -> dict:
        if self.store is not None:
            self.store.close()
        self.__init__(self.args.model_dump(mode="json"))
        return self.versions()

    def check_health(self) -> None:
        if self.store is not None:
            self.store.current()


# Process-wide limits of this replica's ingress (set by Ingress.__init__; one ingress per
# replica process).  Serve ships the ingress class by value (cloudpickle copies the globals
# its methods use), so the class sets them through a module-level function, which travels
# by reference and mutates this module's dict.
_LIMITS: dict[str, int] = {"max_body_bytes": 1 << 20}


def _set_limits(**kw: int) -> None:
    _LIMITS.update(kw)

app = FastAPI(
    title="rayrec recommender",
    description="Session (GRU4Rec) and daily recommendations with filters, blending and a "
    "popularity fallback.",
    version="1",
)


@app.middleware("http")
async def _body_limit(request: Request, call_next):  # noqa: ANN001, ANN201
    limit = _LIMITS["max_body_bytes"]
    if request.method in ("POST", "PUT", "PATCH"):
        cl = request.headers.get("content-length")
        if cl is not None:
            if not cl.isdigit() or int(cl) > limit:
                return JSONResponse({"detail": f"request body over {limit} bytes"}, 413)
        else:
            body = await request.body()
            if len(body) > limit:
                return JSONResponse({"detail": f"request body over {limit} bytes"}, 413)
    return await call_next(request)


def _check_id(value: str, name: str) -> str:
    try:
        return validate_id(value, name)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _raise_if_error(res: dict | None) -> None:
    if isinstance(res, dict) and "error" in res:
        raise HTTPException(int(res.get("status", 422)), res["error"])


@serve.ingress(app)
class Ingress:
    def __init__(self, session_rec, daily_rec, args: dict) -> None:  # noqa: ANN001
        self.args = a = RecommenderArgs(**args)
        self.session_rec = session_rec
        self.daily_rec = daily_rec
        self.store = make_session_store(a.session_store, _limits(a), a.session_key_prefix)
        self.log = (EventLog(a.event_log_dir, format=a.event_log_format,
                             rotate_bytes=a.event_log_rotate_bytes)
                    if a.event_log_dir else None)
        self.catalog = ItemCatalog([], ItemCatalog.read_metadata(a.item_metadata))
        self.admin_token = os.environ.get(a.admin_token_env) or None
        _set_limits(max_body_bytes=a.max_body_bytes)

    # -- helpers --
    def _k(self, k: int | None) -> int:
        k = self.args.default_k if k is None else k
        if k > self.args.max_k:
            raise HTTPException(422, f"k must be <= {self.args.max_k}, got {k}")
        return k

    def _opts(self, o: RecOptions) -> RecOptions:
        for name in ("include_categories", "exclude_categories", "exclude_items"):
            for v in getattr(o, name):
                _check_id(v, name)
        return o

    async def _session_call(self, items: list[str], k: int, exclude: list[str],
                            o: RecOptions, strict: bool = False) -> dict:
        req = {"items": items, "k": k, "exclude": exclude, "strict_items": strict,
               "include_categories": o.include_categories,
               "exclude_categories": o.exclude_categories}
        h = self.session_rec
        if o.model:
            h = h.options(multiplexed_model_id=o.model)
        try:
            res = await h.recommend.remote(req)
        except _REPLICA_GONE:
            # The replica died under this request (scoring is a read: retry once; the
            # router has by now marked the replica dead and picks a live one).
            res = await h.recommend.remote(req)
        _raise_if_error(res)
        return res

    def _admin(self, request: Request) -> None:
        given = request.headers.get("x-admin-token", "")
        if not self.admin_token or not hmac.compare_digest(given.encode(), self.admin_token.encode()):
            raise HTTPException(403, "admin token missing or wrong (header X-Admin-Token)")

    def check_health(self) -> None:
        """Serve's replica health check: the session store must answer."""
        if not self.store.ping():
            raise RuntimeError("session store unreachable")

    # -- endpoints --
    @app.get("/health")
    def health(self) -> dict:
        ok = self.store.ping()
        if not ok:
            raise HTTPException(503, "session store unreachable")
        return {"status": "ok"}

    @app.get("/noop")
    def noop(self) -> dict:
        """Does nothing (the benchmark's baseline for Serve's own overhead)."""
        return {"ok": True}

    @app.post("/events", response_model=EventsOut)
    def post_events(self, body: EventsIn) -> EventsOut:
        if len(body.events) > self.args.max_events_per_request:
            raise HTTPException(
                413, f"events: at most {self.args.max_events_per_request} rows per request, "
                f"got {len(body.events)}")
        now_ms = int(time.time() * 1000)
        errors: list[Rejected] = []
        by_session: dict[str, tuple[str | None, list[SessionEvent]]] = {}
        rows: list[LogRow] = []
        for i, raw in enumerate(body.events):
            if not isinstance(raw, dict):
                errors.append(Rejected(index=i, reason="row must be a JSON object (see EventIn)"))
                continue
            try:
                e = EventIn(**raw)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(x) for x in err.get("loc", ())) or "row"
                errors.append(Rejected(index=i, reason=f"{where}: {err.get('msg')}"))
                continue
            ts = e.ts if e.ts is not None else now_ms
            uid, evs = by_session.get(e.session_id, (None, []))
            evs.append(SessionEvent(e.item_id, ts, e.event, e.value))
            by_session[e.session_id] = (e.user_id or uid, evs)
            rows.append(LogRow(e.user_id, e.session_id, e.item_id, ts, e.event, e.value))
        if self.log is not None and rows:
            self.log.append(rows)
        for sid, (uid, evs) in by_session.items():
            self.store.append(sid, evs, user_id=uid)
        return EventsOut(accepted=len(rows), rejected=len(errors), errors=errors[:100],
                         sessions=len(by_session))

    async def _session_recs(self, session_id: str, o: RecOptions) -> RecsOut:
        _check_id(session_id, "session_id")
        self._opts(o)
        k = self._k(o.k)
        st = self.store.get(session_id)
        items = st.item_ids if st is not None else []
        excl_consumed = self.args.exclude_consumed if o.exclude_consumed is None \
            else o.exclude_consumed
        exclude = list(o.exclude_items) + (items if excl_consumed else [])
        if excl_consumed and st is not None and st.user_id:
            exclude += self.store.user_items(st.user_id)
        res = await self._session_call(items, k, exclude, o)
        since = None if st is None or st.last_ts is None else \
            max(0.0, time.time() - st.last_ts / 1000.0)
        return RecsOut(items=res["items"], scores=res["scores"], source=res["source"],
                       model=res.get("model"), session_events=len(items),
                       seconds_since_last_event=since, unknown_items=res["unknown_items"])

    @app.get("/sessions/{session_id}/recommendations", response_model=RecsOut)
    async def session_recs(
        self, session_id: str, k: int | None = Query(None, ge=1, le=HARD_MAX_K),
        exclude_consumed: bool | None = None,
        include_categories: list[str] = Query([], max_length=100),
        exclude_categories: list[str] = Query([], max_length=100),
        model: str | None = Query(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}$"),
    ) -> RecsOut:
        return await self._session_recs(session_id, RecOptions(
            k=k, exclude_consumed=exclude_consumed, include_categories=include_categories,
            exclude_categories=exclude_categories, model=model))

    @app.post("/sessions/{session_id}/recommendations", response_model=RecsOut)
    async def session_recs_post(self, session_id: str, body: RecOptions) -> RecsOut:
        return await self._session_recs(session_id, body)

    @app.post("/recommendations", response_model=RecsOut)
    async def stateless_recs(self, body: StatelessIn) -> RecsOut:
        """Recommendations for an item list given in the request (no stored state)."""
        self._opts(body)
        if len(body.items) > self.args.max_items_per_request:
            raise HTTPException(413, f"items: at most {self.args.max_items_per_request} ids, "
                                f"got {len(body.items)}")
        for it in body.items:
            _check_id(it, "items")
        k = self._k(body.k)
        excl = self.args.exclude_consumed if body.exclude_consumed is None \
            else body.exclude_consumed
        exclude = list(body.exclude_items) + (list(body.items) if excl else [])
        res = await self._session_call(list(body.items), k, exclude, body, body.strict_items)
        return RecsOut(items=res["items"], scores=res["scores"], source=res["source"],
                       model=res.get("model"), session_events=len(body.items),
                       unknown_items=res["unknown_items"])

    @app.get("/users/{user_id}/recommendations", response_model=RecsOut)
    async def user_recs(
        self, user_id: str, k: int | None = Query(None, ge=1, le=HARD_MAX_K),
        session_id: str | None = None,
        blend_policy: Literal["interleave", "weighted", "session_first", "daily_first"]
        | None = None,
        session_weight: float | None = Query(None, ge=0.0, le=1.0),
        exclude_consumed: bool | None = None,
        include_categories: list[str] = Query([], max_length=100),
        exclude_categories: list[str] = Query([], max_length=100),
    ) -> RecsOut:
        """Daily recommendations (seed 000), optionally blended with a live session.

        ``scores`` here are rank scores (K, K-1, ..., 1): the daily and session models'
        scores are on different scales, so the blend is rank-based (see ``core.blend``)."""
        _check_id(user_id, "user_id")
        o = self._opts(RecOptions(k=k, exclude_consumed=exclude_consumed,
                                  include_categories=include_categories,
                                  exclude_categories=exclude_categories))
        if o.include_categories or o.exclude_categories:
            try:
                self.catalog.check_categories(o.include_categories, "include_categories")
                self.catalog.check_categories(o.exclude_categories, "exclude_categories")
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None
        k = self._k(o.k)
        excl = self.args.exclude_consumed if o.exclude_consumed is None else o.exclude_consumed
        consumed = set(self.store.user_items(user_id)) if excl else set()
        st = None
        if session_id is not None:
            _check_id(session_id, "session_id")
            st = self.store.get(session_id)
            if st is not None and excl:
                consumed |= set(st.item_ids)
        daily = await self.daily_rec.get.remote(user_id)
        daily_items = [] if daily is None else [
            i for i in daily["items"] if i not in consumed
            and self.catalog.allowed(i, o.include_categories, o.exclude_categories)]
        session_items: list[str] = []
        source = "daily" if daily_items else "popularity"
        if st is not None and st.events:
            res = await self._session_call(st.item_ids, k, sorted(consumed), o)
            if res["source"] == "session":
                session_items = res["items"]
                source = "blend" if daily_items else "session"
        items = blend(session_items, daily_items, k, blend_policy or self.args.blend_policy,
                      self.args.session_weight if session_weight is None else session_weight)
        if len(items) < k:  # popularity fill (unknown user, everything filtered, ...)
            res = await self._session_call([], k - len(items), sorted(consumed | set(items)), o)
            items += res["items"]
        return RecsOut(items=items, scores=[float(len(items) - r) for r in range(len(items))],
                       source=source, store_version=None if daily is None else daily["version"],
                       session_events=0 if st is None else len(st.events))

    @app.get("/versions")
    async def versions(self) -> dict:
        s, d = await asyncio.gather(self.session_rec.versions.remote(),
                                    self.daily_rec.versions.remote())
        return {"session_model": s, "daily_store": d}

    @app.post("/admin/reload")
    async def admin_reload(self, request: Request) -> dict:
        """Re-open the daily store (and report versions). Needs X-Admin-Token."""
        self._admin(request)
        d = await self.daily_rec.reload.remote()
        return {"daily_store": d}

    @app.post("/admin/rollback")
    async def admin_rollback(self, request: Request, body: RollbackIn) -> dict:
        """Roll the daily store back to ``to_version`` (default: the previous version)."""
        self._admin(request)
        res = await self.daily_rec.rollback.remote(body.to_version)
        _raise_if_error(res)
        return res

    @app.delete("/sessions/{session_id}")
    def delete_session(self, session_id: str) -> dict:
        _check_id(session_id, "session_id")
        return {"deleted": self.store.clear(session_id)}


# ---- builder ---------------------------------------------------------------------------
def _actor_opts(num_cpus: float, env: dict[str, str]) -> dict[str, Any]:
    opts: dict[str, Any] = {"num_cpus": num_cpus}
    if env:
        opts["runtime_env"] = {"env_vars": dict(env)}
    return opts


def build_app(args: RecommenderArgs) -> serve.Application:
    """The application for ``serve run`` / ``serve.run`` (typed arguments)."""
    if isinstance(args, dict):
        args = RecommenderArgs(**args)
    a = args.model_dump(mode="json")
    # Replicas get the model through user_config only: a rollout (new ``model``) then changes
    # user_config alone and Serve applies it in place instead of replacing replicas.
    a["model"] = "latest"
    # fail at build time, naming the model
    resolve_model_path(args.model_dir, resolve_model_name(args.model_dir, args.model))
    session_opts: dict[str, Any] = dict(
        user_config={"model_version": args.model},
        health_check_period_s=args.health_check_period_s,
        health_check_timeout_s=args.health_check_timeout_s,
        ray_actor_options=_actor_opts(args.session_num_cpus, args.replica_env),
        max_ongoing_requests=max(8, 2 * args.max_batch_size),
    )
    if args.session_replicas is not None:
        session_opts["num_replicas"] = args.session_replicas
    else:
        session_opts["autoscaling_config"] = dict(args.autoscaling)
    session = serve.deployment(SessionRecommender).options(**session_opts).bind(a)
    daily = serve.deployment(DailyRecommender).options(
        ray_actor_options=_actor_opts(args.daily_num_cpus, args.replica_env),
        health_check_period_s=args.health_check_period_s,
        max_ongoing_requests=64,
    ).bind(a)
    env = dict(args.replica_env)
    token = os.environ.get(args.admin_token_env)
    if token:
        env[args.admin_token_env] = token
    ingress_actor = _actor_opts(args.ingress_num_cpus, env)
    return serve.deployment(Ingress).options(
        num_replicas=args.ingress_replicas, ray_actor_options=ingress_actor,
        max_ongoing_requests=256,
    ).bind(session, daily, a)


def demo_request(
    args: RecommenderArgs | dict,
    items: list[str] | None = None,
    k: int = 10,
    port: int = 8000,
    session_id: str = "demo-session",
) -> dict:
    """Serve the app on 127.0.0.1:``port``, post a session's events, ask for its
    recommendations and print request and answer (the end of ``make demo``).  Ray must be
    initialised (``rayrec.platform.runtime.init_ray``); the app keeps running until
    ``serve.shutdown()``.  ``items`` default: the model's three most popular items."""
    import urllib.request

    a = args if isinstance(args, RecommenderArgs) else RecommenderArgs(**args)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:  # an already running Serve keeps its own HTTP options
        from ray.serve.context import _get_global_client

        port = int(_get_global_client().http_config.port)
    except (ImportError, AttributeError):
        pass
    serve.run(build_app(a), name="recommender", route_prefix="/")
    if items is None:
        path = resolve_model_path(a.model_dir, resolve_model_name(a.model_dir, a.model))
        items = json.loads((path / "items.json").read_text())[:3]
    base = f"http://127.0.0.1:{port}"
    events = {"events": [{"session_id": session_id, "item_id": i} for i in items]}

    def call(method: str, url: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    print(f"POST {base}/events {json.dumps(events)}")
    print(" ->", json.dumps(call("POST", f"{base}/events", events)))
    url = f"{base}/sessions/{session_id}/recommendations?k={k}"
    print(f"GET {url}")
    ans = call("GET", url)
    print(" ->", json.dumps(ans, indent=1))
    print("keep it running with: serve run serve_apps/configs/recommender.yaml "
          f"(model_dir={a.model_dir}, model={a.model})")
    return ans

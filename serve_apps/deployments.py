"""The three deployments of the recommender, thin: they fetch state and models and hand the
decisions to :mod:`rayrec.serve_apps.policy`.  They talk through the typed messages of
:mod:`rayrec.serve_apps.messages`; the HTTP bodies are :mod:`rayrec.serve_apps.schemas`.

* :class:`SessionRecommender` scores sessions with any registered session model
  (:class:`rayrec.serve_apps.scoring.SessionModel`): ``@serve.batch``,
  ``@serve.multiplexed`` (``?model=``), the default model from ``user_config`` (a rollout is
  applied in place by ``reconfigure``), a health check on the session store.
* :class:`DailyRecommender` reads the daily job's published recommendations (seed 000
  section 5); a newly published version is seen on the next request, without a restart.
* :class:`Ingress` is the FastAPI app: validation, limits, the session store writes and the
  event log, the exclusions / filters / blend / popularity fill (policy functions), admin.

The app is assembled by :func:`rayrec.serve_apps.app.build_app` (the request flow is drawn
in its module docstring).
"""

# No `from __future__ import annotations`: Serve rebuilds the FastAPI routes of the class
# ingress in the replica, where string annotations of the request models do not resolve.

import asyncio
import dataclasses
import hmac
import os
import time
from typing import Literal

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve

from rayrec.platform.checkpoint import CheckpointError
from rayrec.platform.sessions import (
    EventLog,
    LogRow,
    SessionEvent,
    SessionState,
    make_session_store,
    validate_id,
)
from rayrec.serve_apps import policy
from rayrec.serve_apps.config import RecommenderArgs
from rayrec.serve_apps.messages import (
    DailyRecs,
    ModelInfo,
    Refusal,
    RolledBack,
    ScoreRequest,
    ScoreResult,
    StoreVersion,
    StoreVersions,
)
from rayrec.serve_apps.policy import ItemCatalog
from rayrec.serve_apps.schemas import (
    HARD_MAX_K,
    MODEL_NAME_REGEX,
    EventIn,
    EventsIn,
    EventsOut,
    RecOptions,
    RecsOut,
    Rejected,
    RollbackIn,
    StatelessIn,
)
from rayrec.serve_apps.scoring import (
    ModelNameError,
    Popularity,
    SessionModel,
    read_item_metadata,
    resolve_model_name,
    resolve_model_path,
)

__all__ = ["DailyRecommender", "Ingress", "SessionRecommender", "api"]

try:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    _REPLICA_GONE: tuple[type[BaseException], ...] = (
        RayActorError, ActorDiedError, ActorUnavailableError)
except ImportError:  # pragma: no cover - older Ray
    from ray.exceptions import RayActorError

    _REPLICA_GONE = (RayActorError,)


# ---- session recommender --------------------------------------------------------------
class SessionRecommender:
    """Scores sessions with a registered session model (see the module docstring)."""

    def __init__(self, args: RecommenderArgs) -> None:
        self.args = args
        s = args.session
        torch.set_num_threads(s.torch_threads)
        self.categories = read_item_metadata(args.catalog.item_metadata)
        self.store = make_session_store(s.store, s.store_limits(), s.key_prefix)
        # The model comes from user_config (Serve calls reconfigure right after __init__),
        # so a rollout changes user_config only and is applied in place.
        self.default: SessionModel | None = None
        self.pop: Popularity | None = None
        self._score.set_max_batch_size(s.batching.max_batch_size)
        self._score.set_batch_wait_timeout_s(s.batching.wait_timeout_s)

    def _load(self, name: str) -> SessionModel:
        model_dir = self.args.session.model_dir
        name = resolve_model_name(model_dir, name)
        return SessionModel(resolve_model_path(model_dir, name), name=name,
                            categories=self.categories)

    def reconfigure(self, user_config: dict) -> None:
        """``user_config: {model_version: <name in model_dir>}`` rolls a new model out in
        place (the old model keeps serving until the new one has loaded)."""
        name = (user_config or {}).get("model_version")
        if name:
            name = resolve_model_name(self.args.session.model_dir, name)
        if name and (self.default is None or name != self.default.name):
            new = self._load(name)
            self.default = new
            self.pop = Popularity(new.catalog, self.store, self.args.session.popularity_refresh_s)

    def _ensure_default(self) -> SessionModel:
        if self.default is None:  # deployed without user_config
            self.reconfigure({"model_version": self.args.session.model})
        return self.default  # type: ignore[return-value]

    @serve.multiplexed(max_num_models_per_replica=3)
    async def get_model(self, model_id: str) -> SessionModel:
        return await asyncio.to_thread(self._load, model_id)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _score(self, batch: list[tuple[SessionModel, ScoreRequest]]
                     ) -> list[ScoreResult | Refusal]:
        out: list[ScoreResult | Refusal | None] = [None] * len(batch)
        groups: dict[int, list[int]] = {}
        for i, (m, _) in enumerate(batch):
            groups.setdefault(id(m), []).append(i)
        for idxs in groups.values():
            model = batch[idxs[0]][0]
            try:
                res = model.score_batch([batch[i][1] for i in idxs],
                                        self.pop if model is self.default else None)
                for i, r in zip(idxs, res):
                    out[i] = r
            except ValueError as exc:  # a bad filter: refuse these requests only
                for i in idxs:
                    out[i] = Refusal(422, str(exc))
        return out  # type: ignore[return-value]

    async def recommend(self, req: ScoreRequest) -> ScoreResult | Refusal:
        default = self._ensure_default()
        model_id = serve.get_multiplexed_model_id()
        try:
            model = default if not model_id or model_id == default.name \
                else await self.get_model(model_id)
        except (ModelNameError, FileNotFoundError) as exc:
            return Refusal(404, str(exc))
        except CheckpointError as exc:  # not a servable session model
            return Refusal(422, str(exc))
        cat = model.catalog
        try:
            cat.check_categories(req.include_categories, "include_categories")
            cat.check_categories(req.exclude_categories, "exclude_categories")
        except ValueError as exc:
            return Refusal(422, str(exc))
        if req.strict_items:
            unknown = [i for i in req.items if i not in cat.index]
            if unknown:
                return Refusal(404, f"items: unknown item id(s) {unknown[:5]}")
        return await self._score((model, req))

    def versions(self) -> ModelInfo:
        return self._ensure_default().info()

    def check_health(self) -> None:
        if not self.store.ping():
            raise RuntimeError("session store unreachable")


# ---- daily recommender ----------------------------------------------------------------
class DailyRecommender:
    """Reads the daily job's published recommendations (current version on every read)."""

    def __init__(self, args: RecommenderArgs) -> None:
        self.args = args
        self.store = None
        if args.daily.store_path:
            from rayrec.platform.store import SQLiteRecommendationStore

            self.store = SQLiteRecommendationStore(args.daily.store_path)

    def get(self, user_id: str) -> DailyRecs | None:
        if self.store is None:
            return None
        r = self.store.get(user_id)
        if r is None:
            return None
        return DailyRecs(list(r.items), [float(s) for s in r.scores], r.version)

    def versions(self) -> StoreVersions:
        if self.store is None:
            return StoreVersions(None, [])
        cur = self.store.current()
        return StoreVersions(
            None if cur is None else cur.version,
            [StoreVersion(v.version, v.as_of, v.model_version, v.n_rows, v.is_current)
             for v in self.store.versions()])

    def rollback(self, to_version: str | None) -> RolledBack | Refusal:
        if self.store is None:
            return Refusal(404, "no recommendation store configured")
        try:
            v = self.store.rollback(to_version)
        except (ValueError, KeyError, LookupError) as exc:
            return Refusal(404, str(exc))
        return RolledBack(v.version)

    def reload(self) -> StoreVersions:
        if self.store is not None:
            self.store.close()
        self.__init__(self.args)
        return self.versions()

    def check_health(self) -> None:
        if self.store is not None:
            self.store.current()


# ---- ingress --------------------------------------------------------------------------
# Process-wide limits of this replica's ingress (set by Ingress.__init__; one ingress per
# replica process).  Serve ships the ingress class by value (cloudpickle copies the globals
# its methods use), so the class sets them through a module-level function, which travels
# by reference and mutates this module's dict.
_LIMITS: dict[str, int] = {"max_body_bytes": 1 << 20}


def _set_limits(**kw: int) -> None:
    _LIMITS.update(kw)


api = FastAPI(
    title="rayrec recommender",
    description="Session (GRU4Rec) and daily recommendations with filters, blending and a "
    "popularity fallback.",
    version="1",
)


@api.middleware("http")
async def _body_limit(request: Request, call_next):
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


def _answer(res):
    """A deployment's answer, or its :class:`Refusal` as that HTTP error."""
    if isinstance(res, Refusal):
        raise HTTPException(res.status, res.reason)
    return res


@serve.ingress(api)
class Ingress:
    def __init__(self, session_rec, daily_rec, args: RecommenderArgs) -> None:
        self.args = args
        self.session_rec = session_rec
        self.daily_rec = daily_rec
        s, ev = args.session, args.events
        self.store = make_session_store(s.store, s.store_limits(), s.key_prefix)
        self.log = (EventLog(ev.log_dir, format=ev.format, rotate_bytes=ev.rotate_bytes)
                    if ev.log_dir else None)
        self.catalog = ItemCatalog([], read_item_metadata(args.catalog.item_metadata))
        self.admin_token = os.environ.get(args.admin.token_env) or None
        _set_limits(max_body_bytes=args.limits.max_body_bytes)

    # -- helpers --
    def _k(self, k: int | None) -> int:
        try:
            return policy.resolve_k(k, self.args.limits.default_k, self.args.limits.max_k)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    def _opts(self, o: RecOptions) -> RecOptions:
        for name in ("include_categories", "exclude_categories", "exclude_items"):
            for v in getattr(o, name):
                _check_id(v, name)
        return o

    def _excluding_consumed(self, o: RecOptions) -> bool:
        return policy.exclude_consumed(o.exclude_consumed, self.args.blend.exclude_consumed)

    def _consumed(self, st: SessionState | None, user_id: str | None = None) -> list[list[str]]:
        """The consumed-item lists of a stored session and of its user (``user_id``, default:
        the session's user)."""
        lists = [st.item_ids] if st is not None else []
        uid = user_id if user_id is not None else (st.user_id if st is not None else None)
        if uid:
            lists.append(self.store.user_items(uid))
        return lists

    def _score_request(self, items: list[str], k: int, exclude: list[str], o: RecOptions,
                       strict: bool = False) -> ScoreRequest:
        return ScoreRequest(list(items), k, exclude, list(o.include_categories),
                            list(o.exclude_categories), strict)

    async def _session_call(self, req: ScoreRequest, model: str | None = None) -> ScoreResult:
        h = self.session_rec
        if model:
            h = h.options(multiplexed_model_id=model)
        try:
            res = await h.recommend.remote(req)
        except _REPLICA_GONE:
            # The replica died under this request (scoring is a read: retry once; the
            # router has by now marked the replica dead and picks a live one).
            res = await h.recommend.remote(req)
        return _answer(res)

    def _admin(self, request: Request) -> None:
        given = request.headers.get("x-admin-token", "")
        if not self.admin_token or not hmac.compare_digest(given.encode(), self.admin_token.encode()):
            raise HTTPException(403, "admin token missing or wrong (header X-Admin-Token)")

    def check_health(self) -> None:
        """Serve's replica health check: the session store must answer."""
        if not self.store.ping():
            raise RuntimeError("session store unreachable")

    # -- endpoints --
    @api.get("/health")
    def health(self) -> dict:
        ok = self.store.ping()
        if not ok:
            raise HTTPException(503, "session store unreachable")
        return {"status": "ok"}

    @api.get("/noop")
    def noop(self) -> dict:
        """Does nothing (the benchmark's baseline for Serve's own overhead)."""
        return {"ok": True}

    @api.post("/events", response_model=EventsOut)
    def post_events(self, body: EventsIn) -> EventsOut:
        limit = self.args.limits.max_events_per_request
        if len(body.events) > limit:
            raise HTTPException(
                413, f"events: at most {limit} rows per request, got {len(body.events)}")
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
        exclude = policy.exclusions(
            o.exclude_items, self._consumed(st) if self._excluding_consumed(o) else ())
        res = await self._session_call(self._score_request(items, k, exclude, o), o.model)
        since = None if st is None or st.last_ts is None else \
            max(0.0, time.time() - st.last_ts / 1000.0)
        return RecsOut(items=res.items, scores=res.scores, source=res.source,
                       item_sources=[res.source] * len(res.items), model=res.model,
                       session_events=len(items), seconds_since_last_event=since,
                       unknown_items=res.unknown_items)

    @api.get("/sessions/{session_id}/recommendations", response_model=RecsOut)
    async def session_recs(
        self, session_id: str, k: int | None = Query(None, ge=1, le=HARD_MAX_K),
        exclude_consumed: bool | None = None,
        include_categories: list[str] = Query([], max_length=100),
        exclude_categories: list[str] = Query([], max_length=100),
        model: str | None = Query(None, pattern=MODEL_NAME_REGEX),
    ) -> RecsOut:
        return await self._session_recs(session_id, RecOptions(
            k=k, exclude_consumed=exclude_consumed, include_categories=include_categories,
            exclude_categories=exclude_categories, model=model))

    @api.post("/sessions/{session_id}/recommendations", response_model=RecsOut)
    async def session_recs_post(self, session_id: str, body: RecOptions) -> RecsOut:
        return await self._session_recs(session_id, body)

    @api.post("/recommendations", response_model=RecsOut)
    async def stateless_recs(self, body: StatelessIn) -> RecsOut:
        """Recommendations for an item list given in the request (no stored state)."""
        self._opts(body)
        limit = self.args.limits.max_items_per_request
        if len(body.items) > limit:
            raise HTTPException(413, f"items: at most {limit} ids, got {len(body.items)}")
        for it in body.items:
            _check_id(it, "items")
        k = self._k(body.k)
        exclude = policy.exclusions(
            body.exclude_items, [body.items] if self._excluding_consumed(body) else ())
        res = await self._session_call(
            self._score_request(body.items, k, exclude, body, body.strict_items), body.model)
        return RecsOut(items=res.items, scores=res.scores, source=res.source,
                       item_sources=[res.source] * len(res.items), model=res.model,
                       session_events=len(body.items), unknown_items=res.unknown_items)

    @api.get("/users/{user_id}/recommendations", response_model=RecsOut)
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
        scores are on different scales, so the blend is rank-based (see ``policy.blend``)."""
        _check_id(user_id, "user_id")
        o = self._opts(RecOptions(k=k, exclude_consumed=exclude_consumed,
                                  include_categories=include_categories,
                                  exclude_categories=exclude_categories))
        inc, exc = o.include_categories, o.exclude_categories
        if inc or exc:
            try:
                self.catalog.check_categories(inc, "include_categories")
                self.catalog.check_categories(exc, "exclude_categories")
            except ValueError as err:
                raise HTTPException(422, str(err)) from None
        k = self._k(o.k)
        st = None
        if session_id is not None:
            _check_id(session_id, "session_id")
            st = self.store.get(session_id)
        excluded = policy.exclusions(
            o.exclude_items, self._consumed(st, user_id) if self._excluding_consumed(o) else ())
        daily: DailyRecs | None = await self.daily_rec.get.remote(user_id)
        daily_items = [] if daily is None else policy.filter_ranked(
            daily.items, set(excluded), lambda i: self.catalog.allowed(i, inc, exc))
        session_items: list[str] = []
        from_session = False
        if st is not None and st.events:
            res = await self._session_call(self._score_request(st.item_ids, k, excluded, o))
            if res.source == "session":
                session_items, from_session = res.items, True
        items = policy.blend(
            session_items, daily_items, k, blend_policy or self.args.blend.policy,
            self.args.blend.session_weight if session_weight is None else session_weight)
        if len(items) < k:  # popularity fill (unknown user, everything filtered, ...)
            res = await self._session_call(self._score_request(
                [], k - len(items), policy.exclusions(excluded, [items]), o))
            items = policy.fill(items, res.items, k)
        return RecsOut(items=items, scores=policy.rank_scores(len(items)),
                       source=policy.blend_source(bool(daily_items), from_session),
                       item_sources=policy.item_sources(items, session_items, daily_items),
                       store_version=None if daily is None else daily.version,
                       session_events=0 if st is None else len(st.events))

    @api.get("/versions")
    async def versions(self) -> dict:
        s, d = await asyncio.gather(self.session_rec.versions.remote(),
                                    self.daily_rec.versions.remote())
        return {"session_model": dataclasses.asdict(s), "daily_store": dataclasses.asdict(d)}

    @api.post("/admin/reload")
    async def admin_reload(self, request: Request) -> dict:
        """Re-open the daily store (and report versions). Needs X-Admin-Token."""
        self._admin(request)
        d = await self.daily_rec.reload.remote()
        return {"daily_store": dataclasses.asdict(d)}

    @api.post("/admin/rollback")
    async def admin_rollback(self, request: Request, body: RollbackIn) -> dict:
        """Roll the daily store back to ``to_version`` (default: the previous version)."""
        self._admin(request)
        res = _answer(await self.daily_rec.rollback.remote(body.to_version))
        return dataclasses.asdict(res)

    @api.delete("/sessions/{session_id}")
    def delete_session(self, session_id: str) -> dict:
        _check_id(session_id, "session_id")
        return {"deleted": self.store.clear(session_id)}

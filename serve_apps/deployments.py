"""The three deployments of the recommender, thin: they fetch state and models and hand the
decisions to :mod:`rayrec.serve_apps.policy`.  They talk through the typed messages of
:mod:`rayrec.serve_apps.messages`; the HTTP bodies are :mod:`rayrec.serve_apps.schemas`.

* :class:`SessionRecommender` scores sessions with any registered session model
  (:class:`rayrec.serve_apps.scoring.SessionModel`): ``@serve.batch``,
  ``@serve.multiplexed`` (``?model=``), the default model from ``user_config`` only (resolved
  once per rollout by ``build_app``; a rollout is applied in place by ``reconfigure``), a
  health check on its readiness (model loaded, store answering).
* :class:`DailyRecommender` reads the daily job's published recommendations (seed 000
  section 5); a newly published version is seen on the next request, without a restart.
* :class:`Ingress` is the FastAPI app: token scopes and the streaming body limit (``_Guard``,
  before FastAPI reads anything), validation, limits, the session store writes (one
  idempotent transaction per request) and the event log (from the store's outbox), the
  exclusions / filters / blend / popularity fill (policy functions), ``/health`` vs
  ``/ready``, admin.

The app is assembled by :func:`rayrec.serve_apps.app.build_app` (the request flow is drawn
in its module docstring).
"""

# No `from __future__ import annotations`: Serve rebuilds the FastAPI routes of the class
# ingress in the replica, where string annotations of the request models do not resolve.

import asyncio
import dataclasses
import hashlib
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Literal

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve

from rayrec.platform.sessions import (
    EventLog,
    EventRow,
    SessionState,
    StoreUnavailable,
    make_session_store,
    validate_id,
)
from rayrec.serve_apps import bounded_receive, policy
from rayrec.serve_apps.auth import TokenTable, route_scope
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
    ItemMeta,
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

logger = logging.getLogger("ray.serve")

try:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    _REPLICA_GONE: tuple[type[BaseException], ...] = (
        RayActorError, ActorDiedError, ActorUnavailableError)
except ImportError:  # pragma: no cover - older Ray
    from ray.exceptions import RayActorError

    _REPLICA_GONE = (RayActorError,)


# ---- session recommender --------------------------------------------------------------
_BAD_MODEL_TTL_S = 60.0
"""A checkpoint that failed to load is refused from memory for this long (or until its
directory changes), instead of being loaded again on every request."""


def _short(exc: BaseException, n: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= n else text[: n - 3] + "..."


class SessionRecommender:
    """Scores sessions with a registered session model (see the module docstring)."""

    def __init__(self, args: RecommenderArgs) -> None:
        self.args = args
        s = args.session
        torch.set_num_threads(s.torch_threads)
        self.categories, self.titles = read_item_metadata(args.catalog.item_metadata,
                                                          args.catalog.category_sep)
        self.store = make_session_store(s.store, s.store_limits(), s.key_prefix)
        # The model comes from user_config only (Serve calls reconfigure right after
        # __init__), resolved once per rollout by build_app: a restarted replica gets the
        # same user_config, so it serves the same model.
        self.default: SessionModel | None = None
        self._bad: dict[str, tuple[float, float, str]] = {}  # name -> (at, dir mtime, reason)
        self._score.set_max_batch_size(s.batching.max_batch_size)
        self._score.set_batch_wait_timeout_s(s.batching.wait_timeout_s)

    def _popularity(self, model: SessionModel) -> Popularity:
        s = self.args.session
        return Popularity(model.catalog, self.store, s.popularity_refresh_s,
                          weight=s.popularity_weight, min_sessions=s.popularity_min_sessions)

    def _load(self, name: str) -> SessionModel:
        model_dir = self.args.session.model_dir
        path = resolve_model_path(model_dir, name)
        m = SessionModel(path, name=name, categories=self.categories, titles=self.titles)
        m.popularity = self._popularity(m)
        return m

    def reconfigure(self, user_config: dict) -> None:
        """``user_config: {model_version: <checkpoint name in model_dir>}`` rolls a model out
        in place (the old model keeps serving until the new one has loaded).  ``latest`` is
        refused: it is resolved once by ``build_app``, never per replica."""
        name = (user_config or {}).get("model_version")
        if not name or name == "latest":
            raise ValueError(
                "user_config.model_version must name a checkpoint directory (build_app "
                f"resolves 'latest' once per rollout), got {name!r}")
        if self.default is None or name != self.default.name:
            self.default = self._load(name)

    def _model(self) -> SessionModel:
        if self.default is None:
            raise RuntimeError("no session model loaded (user_config.model_version missing)")
        return self.default

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
                res = model.score_batch([batch[i][1] for i in idxs], model.popularity)
                for i, r in zip(idxs, res):
                    out[i] = r
            except ValueError as exc:  # a bad filter: refuse these requests only
                for i in idxs:
                    out[i] = Refusal(422, str(exc)[:300])
        return out  # type: ignore[return-value]

    def _dir_mtime(self, name: str) -> float:
        """The checkpoint directory's mtime (-1 when it is gone): a rewritten one is retried."""
        try:
            return (Path(self.args.session.model_dir) / name).stat().st_mtime
        except OSError:
            return -1.0

    def _known_bad(self, name: str) -> str | None:
        hit = self._bad.get(name)
        if hit is None:
            return None
        at, mtime, reason = hit
        if time.monotonic() - at > _BAD_MODEL_TTL_S or self._dir_mtime(name) != mtime:
            del self._bad[name]
            return None
        return reason

    async def _multiplexed(self, model_id: str) -> SessionModel | Refusal:
        reason = self._known_bad(model_id)
        if reason is not None:
            return Refusal(422, reason)
        try:
            return await self.get_model(model_id)
        except (ModelNameError, FileNotFoundError) as exc:
            return Refusal(404, str(exc)[:300])
        except Exception as exc:  # corrupt / incomplete / not a session model: remember it
            reason = f"model {model_id!r} cannot be served: {_short(exc)}"
            if len(self._bad) > 64:
                self._bad.clear()
            self._bad[model_id] = (time.monotonic(), self._dir_mtime(model_id), reason)
            return Refusal(422, reason)

    async def recommend(self, req: ScoreRequest) -> ScoreResult | Refusal:
        default = self._model()
        model_id = serve.get_multiplexed_model_id()
        if not model_id or model_id == default.name:
            model = default
        else:
            got = await self._multiplexed(model_id)
            if isinstance(got, Refusal):
                return got
            model = got
        cat = model.catalog
        try:
            cat.check_categories(req.include_categories, "include_categories")
            cat.check_categories(req.exclude_categories, "exclude_categories")
        except ValueError as exc:
            return Refusal(422, str(exc)[:300])
        if req.strict_items:
            unknown = [i for i in req.items if i not in cat.index]
            if unknown:
                return Refusal(404, f"items: unknown item id(s) {[u[:40] for u in unknown[:5]]}")
        return await self._score((model, req))

    def versions(self) -> ModelInfo:
        return self._model().info()

    def ready(self) -> list[str]:
        """Why this replica is not ready ([] when it is): model loaded, store answering."""
        problems = []
        if self.default is None:
            problems.append("session model not loaded")
        if not self.store.ping():
            problems.append("session store unreachable")
        return problems

    def check_health(self) -> None:
        problems = self.ready()
        if problems:
            raise RuntimeError("; ".join(problems))


# ---- daily recommender ----------------------------------------------------------------
class DailyRecommender:
    """Reads the daily job's published recommendations (current version on every read).

    The store file must exist at start-up (an error naming the path) unless
    ``daily.optional``; one that vanishes later answers 503 with the reason (and ``/ready``
    says so), and is opened again once it is back."""

    def __init__(self, args: RecommenderArgs) -> None:
        self.args = args
        self.store = None
        self.path = Path(args.daily.store_path) if args.daily.store_path else None
        if self.path is not None:
            try:
                self._open()
            except FileNotFoundError as exc:
                if not args.daily.optional:
                    raise FileNotFoundError(
                        f"daily.store_path: {exc} (set daily.optional: true to start "
                        "without it)") from None

    def _open(self) -> None:
        from rayrec.platform.store import SQLiteRecommendationStore

        assert self.path is not None
        self.store = SQLiteRecommendationStore(self.path, create=False)

    def _close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store = None

    def _problem(self) -> str | None:
        """None when the store can be read now; else the reason (503)."""
        if self.path is None:
            return None
        if not self.path.is_file():
            self._close()
            return f"daily store unavailable: {self.path.name} not found (daily.store_path)"
        if self.store is None:
            try:
                self._open()
            except (FileNotFoundError, sqlite3.Error) as exc:
                return f"daily store unavailable: {self.path.name}: {_short(exc, 120)}"
        return None

    def _missing_ok(self) -> bool:
        return self.args.daily.optional and (self.path is None or not self.path.is_file())

    def get(self, user_id: str) -> DailyRecs | Refusal | None:
        if self.path is None:
            return None
        problem = self._problem()
        if problem is not None:
            return None if self._missing_ok() else Refusal(503, problem)
        try:
            r = self.store.get(user_id)  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            return Refusal(503, f"daily store unavailable: {_short(exc, 120)}")
        if r is None:
            return None
        return DailyRecs(list(r.items), [float(s) for s in r.scores], r.version)

    def versions(self) -> StoreVersions:
        if self.path is None:
            return StoreVersions(None, [])
        problem = self._problem()
        if problem is not None:
            return StoreVersions(None, [], problem)
        cur = self.store.current()  # type: ignore[union-attr]
        return StoreVersions(
            None if cur is None else cur.version,
            [StoreVersion(v.version, v.as_of, v.model_version, v.n_rows, v.is_current, v.backfill)
             for v in self.store.versions()],  # type: ignore[union-attr]
            None if cur is not None else f"daily store {self.path.name}: no published version")

    def rollback(self, to_version: str | None) -> RolledBack | Refusal:
        if self.path is None:
            return Refusal(404, "no recommendation store configured")
        problem = self._problem()
        if problem is not None:
            return Refusal(503, problem)
        try:
            v = self.store.rollback(to_version)  # type: ignore[union-attr]
        except (ValueError, KeyError, LookupError) as exc:
            return Refusal(404, str(exc)[:300])
        return RolledBack(v.version)

    def reload(self) -> StoreVersions | Refusal:
        """Re-open the store file (503 with the reason when it is missing or unreadable)."""
        self._close()
        if self.path is None:
            return self.versions()
        problem = self._problem()
        if problem is not None and not self._missing_ok():
            return Refusal(503, problem)
        return self.versions()

    def ready(self) -> list[str]:
        """Why the daily store cannot serve ([] when it can, or when it is optional and
        absent): readable and at a published version."""
        if self.path is None or self._missing_ok():
            return []
        problem = self._problem()
        if problem is not None:
            return [problem]
        try:
            cur = self.store.current()  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            return [f"daily store unavailable: {_short(exc, 120)}"]
        return [] if cur is not None else [f"daily store {self.path.name}: no published version"]

    def check_health(self) -> None:
        """Liveness of this replica only: a vanished store file is not fixed by restarting
        the replica, so it is reported by ``/ready`` and answered 503, not restarted."""


# ---- ingress --------------------------------------------------------------------------
# Process-wide guard of this replica's ingress (set by Ingress.__init__; one ingress per
# replica process).  Serve ships the ingress class by value (cloudpickle copies the globals
# its methods use), so the class sets them through a module-level function, which travels
# by reference and mutates this module's dict.
_GUARD: dict = {"max_body_bytes": 1 << 20, "tokens": TokenTable(), "auth": False}


def _configure_guard(**kw) -> None:
    _GUARD.update(kw)


class _BodyTooLarge(Exception):
    pass


def _json(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status, headers=headers)


def _presented(scope: dict) -> list[str]:
    """The tokens a request presents: ``Authorization: Bearer``, ``X-Api-Token``,
    ``X-Admin-Token`` (at most 4 looked at)."""
    out = []
    for k, v in scope.get("headers") or ():
        if k == b"authorization":
            text = v.decode("latin-1")
            if text[:7].lower() == "bearer ":
                out.append(text[7:].strip())
        elif k in (b"x-api-token", b"x-admin-token"):
            out.append(v.decode("latin-1").strip())
    return out[:4]


def _scopes(scope: dict) -> frozenset[str] | None:
    """The union of the scopes of the valid tokens presented; None when none is valid."""
    got: frozenset[str] | None = None
    for token in _presented(scope):
        s = _GUARD["tokens"].scopes_of(token)
        if s is not None:
            got = s if got is None else got | s
    return got


class _Guard:
    """Pure ASGI middleware, before FastAPI reads anything: the route's scope is checked
    first (so an unauthorised request is refused before its body is even parsed), then the
    body is counted *while it streams in* (chunked uploads have no Content-Length): past
    ``limits.max_body_bytes`` the request answers 413 and the rest is never buffered."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        need = route_scope(scope.get("method", "GET"), scope.get("path", ""))
        if need is not None and (need == "admin" or _GUARD["auth"]):
            got = _scopes(scope)
            if got is None or need not in got:
                status = 403 if (got is not None or need == "admin" or _presented(scope)) \
                    else 401
                msg = (f"token with scope {need!r} required (Authorization: Bearer <token>"
                       + (", or X-Admin-Token" if need == "admin" else "") + ")")
                return await _json(status, msg, {"www-authenticate": "Bearer"}
                                   if status == 401 else None)(scope, receive, send)
        limit = _GUARD["max_body_bytes"]
        for k, v in scope.get("headers") or ():
            if k == b"content-length":
                if not v.isdigit() or int(v) > limit:
                    return await _json(413, f"request body over {limit} bytes")(
                        scope, receive, send)
        seen = 0
        too_large = started = False
        refusal = _json(413, f"request body over {limit} bytes (limits.max_body_bytes)")

        async def counted_receive():
            nonlocal seen, too_large
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    too_large = True
                    raise _BodyTooLarge()
            return msg

        async def guarded_send(msg):
            # FastAPI turns an error raised inside its body read into its own 400: whatever
            # the app answers once the limit was crossed is replaced by the 413
            nonlocal started
            if too_large:
                if not started:
                    started = True
                    await refusal(scope, receive, send)
                return
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if too_large and not started:
            await refusal(scope, receive, send)


api = FastAPI(
    title="rayrec recommender",
    description="Session (GRU4Rec) and daily recommendations with filters, blending and a "
    "popularity fallback.",
    version="1",
)
api.add_middleware(_Guard)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the fields that failed, never echoing the input (a 100k-item list used to
    come back whole): at most 10 errors, each message cut to 200 characters."""
    errs = exc.errors()
    detail = [{"loc": [str(x)[:60] for x in e.get("loc", ())][:6],
               "msg": str(e.get("msg", ""))[:200], "type": str(e.get("type", ""))[:60]}
              for e in errs[:10]]
    return JSONResponse({"detail": detail, "errors": len(errs)}, 422)


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


def _row_key(e: EventIn, request_digest: str, index: int) -> str:
    """The idempotency key of a row: the client's ``event_id``; else a hash of the row (with
    its ``ts``, so the same event sent in two requests is one); a row without ``ts`` gets its
    time from the server, so its key hashes the whole request and the row's position (a
    retry of the same request is the same events, two identical rows in it are two)."""
    if e.event_id is not None:
        return f"c:{e.event_id}"
    fields = [e.session_id, e.item_id, e.user_id, e.event, e.value]
    if e.ts is not None:
        fields.append(e.ts)
    else:
        fields += [request_digest, index]
    digest = hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()
    return f"h:{digest[:40]}"


@serve.ingress(api)
class Ingress:
    def __init__(self, session_rec, daily_rec, args: RecommenderArgs) -> None:
        self.args = args
        self._scope_of: dict[str, str | None] = {}  # checkpoint name -> its context scope
        self.session_rec = session_rec
        self.daily_rec = daily_rec
        s, ev = args.session, args.events
        kw = {} if s.store.startswith(("redis", "rediss", "unix")) else \
            {"busy_timeout_s": s.busy_timeout_s}
        self.store = make_session_store(s.store, s.store_limits(), s.key_prefix, **kw)
        self.log = (EventLog(ev.log_dir, format=ev.format, rotate_bytes=ev.rotate_bytes)
                    if ev.log_dir else None)
        self.catalog = ItemCatalog([], *read_item_metadata(args.catalog.item_metadata,
                                                           args.catalog.category_sep))
        entries = [(t.name, t.sha256, t.scopes) for t in args.auth.tokens]
        if args.auth.tokens_file:
            entries += TokenTable.read_file(args.auth.tokens_file)
        if args.admin.token_hash:
            entries.append(("admin", args.admin.token_hash, ["read", "write", "admin"]))
        _configure_guard(max_body_bytes=args.limits.max_body_bytes, tokens=TokenTable(entries),
                         auth=args.auth.enabled)
        # Serve's replica would otherwise fetch a whole upload from the proxy, read or not
        bounded_receive.install(max(args.limits.max_body_bytes, 256 << 10))
        if self.log is not None:  # what an earlier (crashed) replica committed but not logged
            try:
                self.store.drain_outbox(self.log)
            except Exception as exc:
                logger.warning("event outbox not drained at start: %s", _short(exc))

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

    def _metadata(self, items: list[str], o: RecOptions) -> list[ItemMeta] | None:
        """Per returned item its categories and title (``include_metadata``), else None."""
        if not o.include_metadata:
            return None
        return [ItemMeta(**self.catalog.metadata(i)) for i in items]

    def _score_request(self, items: list[str], k: int, exclude: list[str], o: RecOptions,
                       strict: bool = False) -> ScoreRequest:
        return ScoreRequest(list(items), k, exclude, list(o.include_categories),
                            list(o.exclude_categories), strict)

    def _with_context(self, req: ScoreRequest, st: SessionState, now: float,
                      model: str | None = None) -> ScoreRequest:
        """For a model that replays per-event context (its scorer has ``encode_events``): the
        stored events with their times, types and values (and, for a session with a user and
        a model with a user memory, the user's events across sessions) plus the request time.
        Models that read ``items`` only get the request as it is (nothing extra to read or
        send)."""
        scope = self._context_scope(model)
        if scope is None:
            return req

        def rows(evs):
            return [(e.item_id, int(e.ts), e.event, e.value) for e in evs]

        user = None
        if st.user_id and scope == "user":  # one more store read, only when replayed
            user = rows(self._store_read(self.store.user_events, st.user_id))
        return dataclasses.replace(req, events=rows(st.events), user_events=user,
                                   now_ms=int(now * 1000))

    def _context_scope(self, model: str | None) -> str | None:
        """What the checkpoint serving ``model`` (None: the rollout's default) replays: None
        (items only: its registered scorer has no ``encode_events``), ``session`` or ``user``
        (``model.memory: user``); read once per checkpoint from its ``config.json`` (JSON,
        never unpickled).  Unreadable: ``session`` (the session deployment answers for a bad
        model).  The default's scope is read once: a rollout that changes it needs a new
        ingress."""
        from rayrec.models import registry

        s = self.args.session
        name = model or s.model
        if name not in self._scope_of:
            try:
                path = resolve_model_path(s.model_dir, resolve_model_name(s.model_dir, name))
                mcfg = json.loads((path / "config.json").read_text()).get("model") or {}
                scorer = registry.get(str(mcfg.get("name"))).scorer
            except (OSError, ValueError, AttributeError, KeyError):
                return "session"
            self._scope_of[name] = (None if not hasattr(scorer, "encode_events") else
                                    "user" if mcfg.get("memory") == "user" else "session")
        return self._scope_of[name]

    async def _call(self, method, *args):
        """A handle call with a deadline, retried once: a replica that died under the call
        (or hangs) costs one retry on a live replica, not a 30 s stall or a 500."""
        timeout = self.args.limits.call_timeout_s
        for attempt in (0, 1):
            resp = method.remote(*args)
            try:
                async with asyncio.timeout(timeout):  # (no extra task, unlike wait_for)
                    return await resp
            except (TimeoutError, *_REPLICA_GONE) as exc:
                try:
                    resp.cancel()
                except Exception:
                    pass
                if attempt == 1:
                    raise HTTPException(503, f"recommender unavailable ({type(exc).__name__}); "
                                             "retry") from None
        raise AssertionError("unreachable")

    async def _session_call(self, req: ScoreRequest, model: str | None = None) -> ScoreResult:
        h = self.session_rec
        if model:
            h = h.options(multiplexed_model_id=model)
        return _answer(await self._call(h.recommend, req))

    def _store_read(self, fn, *args):
        try:
            return fn(*args)
        except (StoreUnavailable, sqlite3.Error) as exc:
            raise HTTPException(503, f"session store unavailable: {_short(exc, 160)}") from None

    def _ready_here(self) -> list[str]:
        try:
            self.store.check_writable()
        except StoreUnavailable as exc:
            return [_short(exc, 200)]
        return []

    def check_health(self) -> None:
        """Serve's replica health check: readiness of what this replica owns (the session
        store takes writes)."""
        problems = self._ready_here()
        if problems:
            raise RuntimeError("; ".join(problems))

    # -- endpoints --
    @api.api_route("/health", methods=["GET", "HEAD"])
    def health(self) -> dict:
        """Liveness: the process answers (see ``/ready`` for whether it can serve)."""
        return {"status": "ok"}

    @api.api_route("/ready", methods=["GET", "HEAD"])
    async def ready(self):
        """Readiness: the session store takes writes, the daily store is readable at a
        published version (unless ``daily.optional``), the session model is loaded.  503
        with the reasons otherwise."""
        problems = await asyncio.to_thread(self._ready_here)
        for h in (self.session_rec, self.daily_rec):
            try:
                problems += await asyncio.wait_for(h.ready.remote(), self.args.limits.call_timeout_s)
            except Exception as exc:
                problems.append(f"{type(exc).__name__} asking a recommender")
        if problems:
            return JSONResponse({"status": "not ready", "detail": "; ".join(problems)[:1000]},
                                503)
        return {"status": "ready"}

    @api.get("/noop")
    def noop(self) -> dict:
        """Does nothing (the benchmark's baseline for Serve's own overhead)."""
        return {"ok": True}

    @api.post("/events", response_model=EventsOut)
    def post_events(self, body: EventsIn) -> EventsOut:
        """Each row is validated on its own; the valid rows are stored in one transaction of
        the session store, each under its idempotency key (``event_id``, else a hash of the
        row), and logged from the store's outbox once committed.  A retried request stores
        nothing twice (its rows count as ``duplicates``).  503: nothing was stored."""
        lim = self.args.limits
        if len(body.events) > lim.max_events_per_request:
            raise HTTPException(413, f"events: at most {lim.max_events_per_request} rows per "
                                     f"request, got {len(body.events)}")
        now_ms = int(time.time() * 1000)
        latest = now_ms + int(lim.max_future_skew_s * 1000)
        errors: list[Rejected] = []
        rows: list[EventRow] = []
        index: list[int] = []
        per_session: dict[str, int] = {}
        digest = None
        for i, raw in enumerate(body.events):
            if not isinstance(raw, dict):
                errors.append(Rejected(index=i, reason="row must be a JSON object (see EventIn)"))
                continue
            try:
                e = EventIn(**raw)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(x)[:40] for x in err.get("loc", ())) or "row"
                errors.append(Rejected(index=i, reason=f"{where}: {str(err.get('msg'))[:160]}"))
                continue
            if e.ts is not None and e.ts > latest:
                errors.append(Rejected(index=i, reason=f"ts: more than {lim.max_future_skew_s:g}"
                                                       " s in the future"))
                continue
            n = per_session.get(e.session_id, 0)
            if n == 0 and len(per_session) >= lim.max_sessions_per_request:
                errors.append(Rejected(index=i, reason="session_id: at most "
                                       f"{lim.max_sessions_per_request} sessions per request"))
                continue
            if n >= lim.max_events_per_session:
                errors.append(Rejected(index=i, reason="session_id: at most "
                                       f"{lim.max_events_per_session} events per session per "
                                       "request"))
                continue
            per_session[e.session_id] = n + 1
            if e.ts is None and e.event_id is None and digest is None:
                digest = hashlib.sha256(json.dumps(body.events, sort_keys=True, default=str,
                                                   separators=(",", ":")).encode()).hexdigest()
            rows.append(EventRow(_row_key(e, digest or "", i), e.session_id, e.item_id,
                                 e.ts if e.ts is not None else now_ms, e.user_id, e.event,
                                 e.value))
            index.append(i)
        try:
            res = self.store.append_events(rows)
        except StoreUnavailable as exc:
            raise HTTPException(503, f"{_short(exc, 200)}; nothing was stored, retry") from None
        for j, reason in res.rejected:
            errors.append(Rejected(index=index[j], reason=reason))
        if self.log is not None and res.stored:
            try:
                self.store.drain_outbox(self.log)
            except Exception as exc:  # committed: the outbox keeps them for the next drain
                logger.warning("event outbox drain failed (events kept): %s", _short(exc))
        errors.sort(key=lambda r: r.index)
        return EventsOut(accepted=len(res.stored), duplicates=len(res.duplicates),
                         rejected=len(errors), errors=errors[:100],
                         sessions=len({rows[j].session_id for j in res.stored}))

    async def _session_recs(self, session_id: str, o: RecOptions) -> RecsOut:
        _check_id(session_id, "session_id")
        self._opts(o)
        k = self._k(o.k)
        st = self._store_read(self.store.get, session_id)
        items = st.item_ids if st is not None else []
        exclude = policy.exclusions(
            o.exclude_items,
            self._store_read(self._consumed, st) if self._excluding_consumed(o) else ())
        req = self._score_request(items, k, exclude, o)
        now = time.time()
        if st is not None:  # the stored session's version: its encoding is cached under it
            req = dataclasses.replace(
                req, cache_key=f"{session_id}:{len(items)}:{st.updated_at!r}:{st.last_ts}")
            req = self._with_context(req, st, now, o.model)
        res = await self._session_call(req, o.model)
        since = None if st is None or st.last_ts is None else \
            max(0.0, now - st.last_ts / 1000.0)
        return RecsOut(items=res.items, scores=res.scores, source=res.source,
                       item_sources=[res.source] * len(res.items), model=res.model,
                       session_events=len(items), seconds_since_last_event=since,
                       unknown_items=res.unknown_items, metadata=self._metadata(res.items, o))

    @api.get("/sessions/{session_id}/recommendations", response_model=RecsOut)
    async def session_recs(
        self, session_id: str, k: int | None = Query(None, ge=1, le=HARD_MAX_K),
        exclude_consumed: bool | None = None,
        include_categories: list[str] = Query([], max_length=100),
        exclude_categories: list[str] = Query([], max_length=100),
        model: str | None = Query(None, pattern=MODEL_NAME_REGEX),
        include_metadata: bool = Query(False, description="add each item's categories and title"),
    ) -> RecsOut:
        return await self._session_recs(session_id, RecOptions(
            k=k, exclude_consumed=exclude_consumed, include_categories=include_categories,
            exclude_categories=exclude_categories, model=model, include_metadata=include_metadata))

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
                       session_events=len(body.items), unknown_items=res.unknown_items,
                       metadata=self._metadata(res.items, body))

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
        include_metadata: bool = Query(False, description="add each item's categories and title"),
    ) -> RecsOut:
        """Daily recommendations (seed 000), optionally blended with a live session.

        ``scores`` here are rank scores (K, K-1, ..., 1): the daily and session models'
        scores are on different scales, so the blend is rank-based (see ``policy.blend``)."""
        _check_id(user_id, "user_id")
        o = self._opts(RecOptions(k=k, exclude_consumed=exclude_consumed,
                                  include_categories=include_categories,
                                  exclude_categories=exclude_categories,
                                  include_metadata=include_metadata))
        inc, exc = o.include_categories, o.exclude_categories
        if inc or exc:
            try:
                self.catalog.check_categories(inc, "include_categories")
                self.catalog.check_categories(exc, "exclude_categories")
            except ValueError as err:
                raise HTTPException(422, str(err)[:300]) from None
        k = self._k(o.k)
        st = None
        if session_id is not None:
            _check_id(session_id, "session_id")
            st = self._store_read(self.store.get, session_id)
        excluded = policy.exclusions(
            o.exclude_items,
            self._store_read(self._consumed, st, user_id) if self._excluding_consumed(o) else ())
        daily: DailyRecs | None = _answer(await self._call(self.daily_rec.get, user_id))
        daily_items = [] if daily is None else policy.filter_ranked(
            daily.items, set(excluded), lambda i: self.catalog.allowed(i, inc, exc))
        session_items: list[str] = []
        from_session = False
        if st is not None and st.events:
            res = await self._session_call(self._with_context(
                self._score_request(st.item_ids, k, excluded, o), st, time.time()))
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
                       session_events=0 if st is None else len(st.events),
                       metadata=self._metadata(items, o))

    @api.get("/versions")
    async def versions(self) -> dict:
        s, d = await asyncio.gather(self._call(self.session_rec.versions),
                                    self._call(self.daily_rec.versions))
        return {"session_model": dataclasses.asdict(s), "daily_store": dataclasses.asdict(d)}

    @api.post("/admin/reload")
    async def admin_reload(self) -> dict:
        """Re-open the daily store (and report versions); 503 when it is missing.  Needs a
        token with scope ``admin`` (checked before anything else)."""
        d = _answer(await self._call(self.daily_rec.reload))
        return {"daily_store": dataclasses.asdict(d)}

    @api.post("/admin/rollback")
    async def admin_rollback(self, body: RollbackIn) -> dict:
        """Roll the daily store back to ``to_version`` (default: the previous version)."""
        res = _answer(await self._call(self.daily_rec.rollback, body.to_version))
        return dataclasses.asdict(res)

    @api.delete("/sessions/{session_id}")
    def delete_session(self, session_id: str) -> dict:
        """Delete a session (scope ``write`` when client tokens are on)."""
        _check_id(session_id, "session_id")
        return {"deleted": self._store_read(self.store.clear, session_id)}

"""The online recommender: a Ray Serve application (issue 5), assembled here.

Request flow (each box a deployment of :mod:`rayrec.serve_apps.deployments`; arrows are
``DeploymentHandle`` calls carrying the typed messages of :mod:`rayrec.serve_apps.messages`)::

    HTTP (127.0.0.1) --> Ingress (FastAPI, OpenAPI at /docs; bodies: serve_apps/schemas.py)
                           |  every route: token scope check, then the body limit while
                           |               the body streams in (413 past limits.max_body_bytes)
                           |  POST /events: validate each row -> SessionStore.append_events
                           |                (one transaction, idempotency key per row: session
                           |                events, user's items, popularity window, outbox)
                           |                -> outbox drained to the EventLog (after commit)
                           |  GET  /sessions/{id}/recommendations:
                           |       SessionStore.get -> policy.exclusions
                           |       -> SessionRecommender.recommend(ScoreRequest) -> ScoreResult
                           |  GET  /users/{id}/recommendations[?session_id=]:
                           |       DailyRecommender.get -> DailyRecs (+ SessionRecommender for
                           |       the live session) -> policy.exclusions, filter_ranked,
                           |       blend, popularity fill
                           |  POST /recommendations (stateless: items in the request)
                           |  GET /versions, GET /health (alive), GET /ready (can serve),
                           |  GET /noop, POST /admin/{reload,rollback}
                           v
            SessionRecommender (any registered session model: scoring.SessionModel;
                                @serve.batch, @serve.multiplexed, user_config rollout,
                                autoscaling, check_health)
            DailyRecommender   (SQLiteRecommendationStore: current version on every read)

* Session state lives in a :class:`~rayrec.platform.sessions.SessionStore` (SQLite file by
  default, Redis for several nodes), never in replica memory: any replica serves any session
  and a replica restart loses nothing.
* The session recommender rebuilds the session's representation from its stored events and
  scores every item (GRU4Rec: the GRU hidden state, seed 003 section 3), so it needs no
  per-session memory either.
* The daily recommender reads the recommendations the daily job published (seed 000 section
  5); a newly published version is seen on the next request, without a restart.
* The policy (exclusions, filters, :func:`rayrec.serve_apps.policy.blend`, popularity fill)
  is pure functions called inside the ingress: merging two lists of K ids costs
  microseconds, a separate deployment would add a hop to every call.

Run it::

    serve run serve_apps/configs/recommender.yaml      # or: serve deploy ... (a running cluster)
    # or from Python:
    #   serve.run(build_app(RecommenderArgs(session={"model_dir": ..., "model": ...})))

The arguments are grouped (:class:`~rayrec.serve_apps.config.RecommenderArgs`: ``session``,
``daily``, ``ingress``, ``events``, ``catalog``, ``limits``, ``blend``, ``health``,
``admin``, ``replica_env``); Serve validates the YAML's ``args:`` into it.

Admin endpoints need a token with scope ``admin``: ``admin.token_hash`` (a salted hash), an
``auth`` token with that scope, or the token in the environment variable named by
``admin.token_env`` (default ``RAYREC_ADMIN_TOKEN``) where the app is built, which
``build_app`` turns into a salted hash: the token itself never reaches a replica's
runtime_env, the deployment arguments, the dashboard or a log.  Client tokens with scopes
(``auth``) guard the public routes when ``auth.enabled`` (on in
``serve_apps/configs/recommender_prod.yaml``; docs/operations.md).

``session.model: latest`` is resolved here, once per rollout, and the resolved checkpoint
name reaches every session replica through ``user_config``; a replica restarted later
serves the same version.
"""

# No `from __future__ import annotations`: Serve reads build_app's parameter annotation to
# validate the args into RecommenderArgs (a typed app builder); it must be the class.

import os
from pathlib import Path
from typing import Any

from ray import serve

from rayrec.serve_apps.auth import hash_token
from rayrec.serve_apps.config import RecommenderArgs
from rayrec.serve_apps.deployments import DailyRecommender, Ingress, SessionRecommender
from rayrec.serve_apps.scoring import resolve_model_name, resolve_model_path

__all__ = ["RecommenderArgs", "build_app"]


def _actor_opts(num_cpus: float, env: dict[str, str]) -> dict[str, Any]:
    opts: dict[str, Any] = {"num_cpus": num_cpus}
    if env:
        opts["runtime_env"] = {"env_vars": dict(env)}
    return opts


def build_app(args: RecommenderArgs) -> serve.Application:
    """The application for ``serve run`` / ``serve deploy`` / ``serve.run`` (typed, grouped
    arguments; a dict is validated into :class:`RecommenderArgs`).

    Resolves the session model once (``latest`` -> a checkpoint name) for every replica,
    checks the daily store exists (unless ``daily.optional``), and replaces an admin token
    found in ``admin.token_env`` by its salted hash."""
    if not isinstance(args, RecommenderArgs):
        args = RecommenderArgs.model_validate(args)
    s = args.session
    # one version for the whole rollout, named in user_config (fails here, naming the model)
    version = resolve_model_name(s.model_dir, s.model)
    resolve_model_path(s.model_dir, version)
    d = args.daily
    if d.store_path and not d.optional and not Path(d.store_path).is_file():
        raise FileNotFoundError(f"daily.store_path: {d.store_path} not found (publish it with "
                                "the daily job first, or set daily.optional: true)")
    # Replicas get the model through user_config only: a rollout (new ``session.model``) then
    # changes user_config alone and Serve applies it in place instead of replacing replicas.
    # The session and daily replicas get no token material at all.
    init = args.model_copy(update={
        "session": s.model_copy(update={"model": "latest"}),
        "admin": args.admin.model_copy(update={"token_hash": None}),
        "auth": args.auth.model_copy(update={"tokens": [], "tokens_file": None,
                                             "enabled": False})})
    session_opts: dict[str, Any] = dict(
        user_config={"model_version": version},
        health_check_period_s=args.health.period_s,
        health_check_timeout_s=args.health.timeout_s,
        ray_actor_options=_actor_opts(s.num_cpus, args.replica_env),
        max_ongoing_requests=max(8, 2 * s.batching.max_batch_size),
    )
    if s.replicas is not None:
        session_opts["num_replicas"] = s.replicas
    else:
        session_opts["autoscaling_config"] = dict(s.autoscaling)
    session = serve.deployment(SessionRecommender).options(**session_opts).bind(init)
    daily = serve.deployment(DailyRecommender).options(
        ray_actor_options=_actor_opts(args.daily.num_cpus, args.replica_env),
        health_check_period_s=args.health.period_s,
        health_check_timeout_s=args.health.timeout_s,
        max_ongoing_requests=64,
    ).bind(init)
    admin = args.admin
    token = os.environ.get(admin.token_env)
    if token and not admin.token_hash:
        admin = admin.model_copy(update={"token_hash": hash_token(token)})
    ingress_args = args.model_copy(update={"admin": admin})
    return serve.deployment(Ingress).options(
        num_replicas=args.ingress.replicas,
        ray_actor_options=_actor_opts(args.ingress.num_cpus, dict(args.replica_env)),
        health_check_period_s=args.health.period_s,
        health_check_timeout_s=args.health.timeout_s,
        max_ongoing_requests=256,
    ).bind(session, daily, ingress_args)

"""The online recommender: a Ray Serve application (issue 5), assembled here.

Request flow (each box a deployment of :mod:`rayrec.serve_apps.deployments`; arrows are
``DeploymentHandle`` calls carrying the typed messages of :mod:`rayrec.serve_apps.messages`)::

    HTTP (127.0.0.1) --> Ingress (FastAPI, OpenAPI at /docs; bodies: serve_apps/schemas.py)
                           |  POST /events: validate each row -> SessionStore.append
                           |                (session events, user's items, popularity)
                           |                -> EventLog.append (durable, canonical schema)
                           |  GET  /sessions/{id}/recommendations:
                           |       SessionStore.get -> policy.exclusions
                           |       -> SessionRecommender.recommend(ScoreRequest) -> ScoreResult
                           |  GET  /users/{id}/recommendations[?session_id=]:
                           |       DailyRecommender.get -> DailyRecs (+ SessionRecommender for
                           |       the live session) -> policy.exclusions, filter_ranked,
                           |       blend, popularity fill
                           |  POST /recommendations (stateless: items in the request)
                           |  GET /versions, GET /health, GET /noop, POST /admin/{reload,rollback}
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

Admin endpoints need the token from the environment variable named by ``admin.token_env``
(default ``RAYREC_ADMIN_TOKEN``) in the process that builds the app; it is forwarded to the
ingress replicas through their runtime environment.  Without it the admin endpoints answer 403.
"""

# No `from __future__ import annotations`: Serve reads build_app's parameter annotation to
# validate the args into RecommenderArgs (a typed app builder); it must be the class.

import os
from typing import Any

from ray import serve

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
    """The application for ``serve run`` / ``serve.run`` (typed, grouped arguments; a dict
    is validated into :class:`RecommenderArgs`)."""
    if not isinstance(args, RecommenderArgs):
        args = RecommenderArgs.model_validate(args)
    s = args.session
    # fail at build time, naming the model
    resolve_model_path(s.model_dir, resolve_model_name(s.model_dir, s.model))
    # Replicas get the model through user_config only: a rollout (new ``session.model``) then
    # changes user_config alone and Serve applies it in place instead of replacing replicas.
    init = args.model_copy(update={"session": s.model_copy(update={"model": "latest"})})
    session_opts: dict[str, Any] = dict(
        user_config={"model_version": s.model},
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
        max_ongoing_requests=64,
    ).bind(init)
    env = dict(args.replica_env)
    token = os.environ.get(args.admin.token_env)
    if token:
        env[args.admin.token_env] = token
    return serve.deployment(Ingress).options(
        num_replicas=args.ingress.replicas,
        ray_actor_options=_actor_opts(args.ingress.num_cpus, env),
        max_ongoing_requests=256,
    ).bind(session, daily, init)

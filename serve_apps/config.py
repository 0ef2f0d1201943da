"""The typed arguments of the recommender app (``args:`` in the Serve config YAML), grouped
by role.  Ray Serve validates the ``args`` mapping into :class:`RecommenderArgs` because
:func:`rayrec.serve_apps.app.build_app` is annotated with it (a typed app builder).

Every section is frozen and rejects unknown keys.  The arguments used to be flat; a flat key
given at the top level (or inside a section) is refused with its new dotted key
(``store_path moved to daily.store_path``), see :data:`MOVED`.
"""

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rayrec.platform.config import StrictModel
from rayrec.platform.sessions import StoreLimits, check_store_url
from rayrec.serve_apps.auth import Scope, check_hash
from rayrec.serve_apps.policy import BlendPolicy
from rayrec.serve_apps.schemas import HARD_MAX_K, HARD_MAX_LIST

__all__ = [
    "MOVED",
    "AdminArgs",
    "AuthArgs",
    "BatchingArgs",
    "BlendArgs",
    "CatalogArgs",
    "DailyArgs",
    "EventsArgs",
    "HealthArgs",
    "IngressArgs",
    "LimitsArgs",
    "RecommenderArgs",
    "SessionArgs",
    "TokenArgs",
]

MOVED: dict[str, str] = {
    "model_dir": "session.model_dir",
    "model": "session.model",
    "session_store": "session.store",
    "session_key_prefix": "session.key_prefix",
    "idle_ttl_s": "session.idle_ttl_s",
    "max_session_events": "session.max_events",
    "max_user_items": "session.max_user_items",
    "popularity_refresh_s": "session.popularity_refresh_s",
    "torch_threads": "session.torch_threads",
    "max_batch_size": "session.batching.max_batch_size",
    "batch_wait_timeout_s": "session.batching.wait_timeout_s",
    "session_replicas": "session.replicas",
    "autoscaling": "session.autoscaling",
    "session_num_cpus": "session.num_cpus",
    "store_path": "daily.store_path",
    "daily_num_cpus": "daily.num_cpus",
    "ingress_replicas": "ingress.replicas",
    "ingress_num_cpus": "ingress.num_cpus",
    "event_log_dir": "events.log_dir",
    "event_log_format": "events.format",
    "event_log_rotate_bytes": "events.rotate_bytes",
    "item_metadata": "catalog.item_metadata",
    "default_k": "limits.default_k",
    "max_k": "limits.max_k",
    "max_events_per_request": "limits.max_events_per_request",
    "max_items_per_request": "limits.max_items_per_request",
    "max_body_bytes": "limits.max_body_bytes",
    "blend_policy": "blend.policy",
    "session_weight": "blend.session_weight",
    "exclude_consumed": "blend.exclude_consumed",
    "health_check_period_s": "health.period_s",
    "health_check_timeout_s": "health.timeout_s",
    "admin_token_env": "admin.token_env",
}
"""Old flat argument -> its dotted key in the grouped arguments."""


class _Section(StrictModel):
    """A group of arguments; an old flat key inside it is refused with its new key."""

    section: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            where = f"{cls.section}." if cls.section else ""
            moved = [f"{where}{k} moved to {MOVED[k]}" for k in data
                     if k in MOVED and k not in cls.model_fields]
            if moved:
                raise ValueError("; ".join(moved))
        return data


class BatchingArgs(_Section):
    """``@serve.batch`` of the session recommender."""

    section: ClassVar[str] = "session.batching"
    max_batch_size: int = Field(32, ge=1)
    wait_timeout_s: float = Field(0.0, ge=0)
    """0: a batch is whatever queued while the previous one ran (no added wait at low load)."""


class SessionArgs(_Section):
    """The session recommender deployment, its model and the session state."""

    section: ClassVar[str] = "session"
    model_dir: str
    """Directory holding model checkpoints (one sub-directory each); model names used for
    multiplexing and rollouts must be directories inside it."""
    model: str = "latest"
    """Default session model: a checkpoint directory name inside ``model_dir``, or
    ``latest`` (the newest checkpoint there).  ``latest`` is resolved once per rollout, by
    ``build_app`` (``serve run`` / ``serve deploy``), and the resolved name reaches every
    replica through ``user_config``: a replica that restarts later serves the same model."""
    store: str = "sqlite:///tmp/rayrec/sessions.db"
    """Session store: ``sqlite:///abs/path.db`` or ``redis://127.0.0.1:6379/0`` (the
    ingress writes events to it, the session recommender reads popularity from it); any
    other scheme is refused."""
    busy_timeout_s: float = Field(5.0, gt=0)
    """SQLite store: how long a write waits for a lock before the request answers 503."""
    key_prefix: str = "rayrec:"
    idle_ttl_s: float = Field(1800.0, gt=0)
    max_events: int = Field(200, ge=1, le=10_000)
    """Events kept per session (the oldest are dropped)."""
    max_user_items: int = Field(500, ge=1)
    max_user_events: int = Field(200, ge=1, le=10_000)
    """Events kept per user (replayed by models with a user memory; the oldest are dropped)."""
    max_clock_skew_s: float = Field(300.0, ge=0)
    """An event older than its user's newest stored event by more than this is a per-row
    rejection of ``POST /events``."""
    popularity_refresh_s: float = Field(5.0, gt=0)
    popularity_window_s: float = Field(3600.0, gt=0)
    """Online popularity: distinct sessions per item within this window."""
    popularity_weight: float = Field(0.3, ge=0.0, le=1.0)
    """Share of the online popularity in the fallback order (the rest: training popularity)."""
    popularity_min_sessions: int = Field(20, ge=1)
    """Online popularity is used only once this many distinct sessions are in the window."""
    torch_threads: int = Field(1, ge=1)
    batching: BatchingArgs = Field(default_factory=BatchingArgs)
    replicas: int | None = Field(None, ge=1)
    """Fixed replica count; None = ``autoscaling``."""
    autoscaling: dict[str, Any] = Field(
        default_factory=lambda: {"min_replicas": 1, "max_replicas": 2,
                                 "target_ongoing_requests": 16}
    )
    """Serve's ``autoscaling_config`` of the session recommender."""
    num_cpus: float = Field(0.5, ge=0)

    @field_validator("model")
    @classmethod
    def _model_name(cls, v: str) -> str:
        if "/" in v or ".." in v or not v.strip() or v != v.strip():
            raise ValueError(f"model must be a directory name inside model_dir, got {v[:60]!r}")
        return v

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str) -> str:
        return check_store_url(v)

    def store_limits(self) -> StoreLimits:
        return StoreLimits(idle_ttl_s=self.idle_ttl_s, max_events=self.max_events,
                           max_user_items=self.max_user_items,
                           popularity_window_s=self.popularity_window_s,
                           max_user_events=self.max_user_events,
                           max_clock_skew_s=self.max_clock_skew_s)


class DailyArgs(_Section):
    """The daily recommender deployment."""

    section: ClassVar[str] = "daily"
    store_path: str | None = None
    """SQLite file of the daily job's recommendation store (its ``store.path``); None: no
    daily recommendations (users get the session list or popularity).  The file must exist
    when the app is built and started (an error naming the path), unless ``optional``."""
    optional: bool = False
    """Start without the store file (it is opened once it appears); /ready stays ready."""
    num_cpus: float = Field(0.25, ge=0)


class IngressArgs(_Section):
    """The HTTP ingress deployment."""

    section: ClassVar[str] = "ingress"
    replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, ge=0)


class EventsArgs(_Section):
    """The durable event log the ingress appends ``POST /events`` rows to."""

    section: ClassVar[str] = "events"
    log_dir: str | None = "/tmp/rayrec/events"
    """None: no event log (events go to the session store only)."""
    format: Literal["csv", "parquet"] = "csv"
    rotate_bytes: int = Field(64 << 20, ge=1024)


class CatalogArgs(_Section):
    """Item metadata for the category filters and ``include_metadata`` responses."""

    section: ClassVar[str] = "catalog"
    item_metadata: str | None = None
    """CSV/Parquet with columns item_id, category (and, optionally, title), e.g. the daily
    job's ``item_metadata.parquet``."""
    category_sep: str | None = Field("|", min_length=1)
    """Separator of several categories in one ``category`` value (``Action|Comedy``: an item
    matches a filter if any of its categories does); None: one category per item."""


class LimitsArgs(_Section):
    """Request limits (over a limit: 413 or 422 with the limit in the reason)."""

    section: ClassVar[str] = "limits"
    default_k: int = Field(20, ge=1, le=HARD_MAX_K)
    max_k: int = Field(100, ge=1, le=HARD_MAX_K)
    max_events_per_request: int = Field(1000, ge=1, le=HARD_MAX_LIST)
    max_items_per_request: int = Field(500, ge=1, le=HARD_MAX_LIST)
    max_events_per_session: int = Field(200, ge=1, le=HARD_MAX_LIST)
    """Rows one session may send in one request (the rest are rejected per row)."""
    max_sessions_per_request: int = Field(100, ge=1, le=HARD_MAX_LIST)
    """Distinct sessions in one ``POST /events`` (rows of further sessions are rejected)."""
    max_future_skew_s: float = Field(300.0, ge=0)
    """An event ``ts`` later than now + this is rejected."""
    max_body_bytes: int = Field(1 << 20, ge=1024)
    """Any request body over this answers 413, counted while it streams in."""
    call_timeout_s: float = Field(10.0, gt=0)
    """A call to the session / daily recommender taking longer is retried once (a dead
    replica), then answers 503."""

    @model_validator(mode="after")
    def _default_within_max(self) -> "LimitsArgs":
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must be <= max_k ({self.max_k})")
        return self


class BlendArgs(_Section):
    """The policy defaults (a request may override each)."""

    section: ClassVar[str] = "blend"
    policy: BlendPolicy = "interleave"
    """How a user's daily list and live-session list merge (see ``policy.blend``)."""
    session_weight: float = Field(0.5, ge=0.0, le=1.0)
    exclude_consumed: bool = True
    """Leave out the items of the session and of the user (see ``policy.exclusions``)."""


class HealthArgs(_Section):
    """Serve's replica health checks: each deployment's readiness (see ``GET /ready``)."""

    section: ClassVar[str] = "health"
    period_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)


class AdminArgs(_Section):
    """``/admin/*`` endpoints (scope ``admin``)."""

    section: ClassVar[str] = "admin"
    token_env: str = "RAYREC_ADMIN_TOKEN"
    """Environment variable holding the admin token in the process that builds the app:
    ``build_app`` replaces it by a salted hash (``token_hash``); the token itself never
    reaches a replica, its runtime_env, the deployment arguments or a log."""
    token_hash: str | None = None
    """``sha256$salt$digest`` of the admin token (:func:`rayrec.serve_apps.auth.hash_token`).
    Neither this nor the environment variable nor an admin-scoped token: 403."""

    @field_validator("token_hash")
    @classmethod
    def _hash(cls, v: str | None) -> str | None:
        return None if v is None else check_hash(v)


class TokenArgs(_Section):
    """One client token: its name (for operators), salted hash and scopes."""

    section: ClassVar[str] = "auth.tokens"
    name: str
    sha256: str
    """``sha256$salt$digest`` (:func:`rayrec.serve_apps.auth.hash_token`), never the token."""
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("sha256")
    @classmethod
    def _hash(cls, v: str) -> str:
        return check_hash(v)


class AuthArgs(_Section):
    """Client tokens for the public routes (``Authorization: Bearer <token>``)."""

    section: ClassVar[str] = "auth"
    enabled: bool = False
    """Require a token with the route's scope (read / write / admin) on every route but
    /health, /ready, /noop and the OpenAPI docs.  Off: only /admin/* needs a token."""
    tokens: list[TokenArgs] = Field(default_factory=list)
    tokens_file: str | None = None
    """A YAML/JSON list of ``{name, sha256, scopes}`` read by each ingress replica at start
    (hashes only; keep it readable by the Ray user alone)."""

    @model_validator(mode="after")
    def _some_tokens(self) -> "AuthArgs":
        if self.enabled and not self.tokens and not self.tokens_file:
            raise ValueError("auth.enabled needs auth.tokens or auth.tokens_file")
        return self


class RecommenderArgs(_Section):
    """Typed arguments of :func:`rayrec.serve_apps.app.build_app`."""

    session: SessionArgs
    daily: DailyArgs = Field(default_factory=DailyArgs)
    ingress: IngressArgs = Field(default_factory=IngressArgs)
    events: EventsArgs = Field(default_factory=EventsArgs)
    catalog: CatalogArgs = Field(default_factory=CatalogArgs)
    limits: LimitsArgs = Field(default_factory=LimitsArgs)
    blend: BlendArgs = Field(default_factory=BlendArgs)
    health: HealthArgs = Field(default_factory=HealthArgs)
    admin: AdminArgs = Field(default_factory=AdminArgs)
    auth: AuthArgs = Field(default_factory=AuthArgs)
    replica_env: dict[str, str] = Field(
        default_factory=lambda: {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    )
    """Environment of every replica (runtime_env env_vars).  The default runs user code on
    the replica's event loop instead of a separate thread: one thread hop less per call,
    which matters for the two-hop session path (see benchmarks/serve_load.py)."""

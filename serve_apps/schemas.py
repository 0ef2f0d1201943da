"""The HTTP contract of the recommender: the request and response bodies the clients see
(FastAPI validates requests against them and publishes them in the OpenAPI spec at
``/openapi.json``).  Every body rejects unknown fields (422 naming the field).

What the deployments pass each other is in :mod:`rayrec.serve_apps.messages`, not here.
"""

# No `from __future__ import annotations`: FastAPI (and Serve, rebuilding the routes of the
# ingress in a replica) must see the real classes in the annotations.

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict

__all__ = [
    "HARD_MAX_K",
    "HARD_MAX_LIST",
    "ID_REGEX",
    "MODEL_NAME_REGEX",
    "EventIn",
    "EventsIn",
    "EventsOut",
    "ItemMeta",
    "RecOptions",
    "RecsOut",
    "Rejected",
    "RollbackIn",
    "StatelessIn",
]

HARD_MAX_K = 1000
"""Upper bound of any ``k`` (the configured ``limits.max_k`` may only be lower)."""
HARD_MAX_LIST = 10_000
"""Upper bound of any id list in a request body (the configured limits may only be lower)."""
ID_REGEX = r"^[A-Za-z0-9_.:@+=-]{1,128}$"
MODEL_NAME_REGEX = r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}$"


# JSON ``true`` is not the number 1, nor ``1`` a boolean (pydantic's lax mode converts them)
StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EventIn(_Strict):
    """One event row (canonical columns); ``ts`` in unix milliseconds (default: now; at most
    ``limits.max_future_skew_s`` ahead).  ``event_id``: the client's idempotency key (a row
    without one is keyed by a hash of the row: see ``POST /events``)."""

    session_id: str = Field(pattern=ID_REGEX)
    item_id: str = Field(pattern=ID_REGEX)
    user_id: str | None = Field(None, pattern=ID_REGEX)
    event_id: str | None = Field(None, pattern=ID_REGEX)
    ts: StrictInt | None = Field(None, ge=631_152_000_000, le=4_102_444_800_000)
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
    """Rows stored by this request."""
    duplicates: int = 0
    """Rows already stored (same ``event_id``, or the same row retried): nothing changed."""
    rejected: int
    errors: list[Rejected]
    sessions: int


class ItemMeta(_Strict):
    """An item's metadata (``catalog.item_metadata``): its categories and title."""

    item_id: str
    categories: list[str] = Field(default_factory=list)
    """Every category of the item ([] when it has none or is not in the metadata)."""
    title: str | None = None


class RecOptions(_Strict):
    k: StrictInt | None = Field(None, ge=1, le=HARD_MAX_K)
    exclude_consumed: StrictBool | None = None
    include_categories: list[str] = Field(default_factory=list, max_length=100)
    exclude_categories: list[str] = Field(default_factory=list, max_length=100)
    exclude_items: list[str] = Field(default_factory=list, max_length=HARD_MAX_LIST)
    model: str | None = Field(None, pattern=MODEL_NAME_REGEX)
    include_metadata: StrictBool = False
    """Add ``metadata`` (categories, title) per returned item to the response."""


class StatelessIn(RecOptions):
    items: list[str] = Field(max_length=HARD_MAX_LIST)
    strict_items: StrictBool = False
    """Reject (404) when an item is not in the model's catalogue instead of ignoring it."""


class RecsOut(_Strict):
    items: list[str]
    scores: list[float]
    source: str
    item_sources: list[str] = Field(default_factory=list)
    """Per item: ``session``, ``daily``, ``session+daily`` or ``popularity``."""
    model: str | None = None
    store_version: str | None = None
    session_events: int = 0
    seconds_since_last_event: float | None = None
    unknown_items: int = 0
    metadata: list[ItemMeta] | None = None
    """With ``include_metadata=true``: one entry per item of ``items``, same order."""


class RollbackIn(_Strict):
    to_version: str | None = Field(None, pattern=ID_REGEX)

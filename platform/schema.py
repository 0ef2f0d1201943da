"""Canonical tables (docs/your_data.md: the canonical schema).

Interactions: ``user_id`` (string, nullable), ``session_id`` (string, nullable until
sessionized), ``item_id`` (string), ``ts`` (timestamp[ms, UTC]), ``event``
(dictionary string), ``value`` (float32, nullable).  Item and user metadata are
separate tables keyed by id.  Processed splits add the dense ``item_idx`` (int32,
0 = most popular training item).
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

TS_TYPE = pa.timestamp("ms", tz="UTC")

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=True),
        pa.field("session_id", pa.string(), nullable=True),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("event", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("value", pa.float32(), nullable=True),
    ]
)

PROCESSED = INTERACTIONS.append(pa.field("item_idx", pa.int32(), nullable=False))

ITEMS = pa.schema(
    [
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ]
)

QUARANTINE_EXTRA = [pa.field("reason", pa.string()), pa.field("source_row", pa.int64())]

# Default plausible time range; the validation config can narrow or widen it.
MIN_TS_SECONDS = 631_152_000  # 1990-01-01 (MovieLens 100K starts in 1997)
MAX_TS_SECONDS = 4_102_444_800  # 2100-01-01

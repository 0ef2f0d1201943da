"""rayrec.platform.store: versioned recommendation store (seed 000, section 5)."""

from rayrec.platform.store.base import RecommendationStore, Recs, Row, VersionInfo
from rayrec.platform.store.sqlite_store import SQLiteRecommendationStore

__all__ = ["RecommendationStore", "Recs", "Row", "SQLiteRecommendationStore", "VersionInfo"]

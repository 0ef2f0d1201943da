"""The versioned recommendation store of the daily pipeline (seed 000, section 5).

Seed 000 pre-generates every customer's recommendations offline each day and stores them
in a database that the online recommender service reads (section 5, Figure 9).  A day's
output is published as one *version*; readers always see exactly one complete version:

* :meth:`RecommendationStore.publish` writes a complete new version and only then switches
  the ``current`` pointer (one transaction); publishing the same ``(as_of, model_version)``
  again returns the existing version instead of writing a duplicate;
* :meth:`~RecommendationStore.get` reads the current version (or a named one);
  :meth:`~RecommendationStore.get_many` reads several users from one version;
* a *backfill* (``publish(..., make_current=False)``: an as-of older than the current one)
  is stored as a complete version, listed and readable by name, but ``current`` stays;
* :meth:`~RecommendationStore.rollback` switches back to the previous complete version
  (backfills are skipped: they were never served);
* :meth:`~RecommendationStore.keep_last` prunes old versions (run on every publish with
  ``keep_versions``), never the current one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Recs", "RecommendationStore", "Row", "VersionInfo"]

#: One user's recommendations as published: ``(user_id, items, scores)``.
Row = tuple[str, Sequence[str], Sequence[float]]


@dataclass(frozen=True)
class VersionInfo:
    """One published (or, for diagnostics, unfinished) version."""

    version: str
    as_of: str
    model_version: str
    complete: bool
    n_rows: int
    created_at: float  # unix seconds
    completed_at: float | None
    is_current: bool
    backfill: bool = False
    """Published with ``make_current=False``: stored and readable by name, never current
    unless rolled back to by name."""


@dataclass(frozen=True)
class Recs:
    """A user's recommendations from one version, best first."""

    user_id: str
    items: list[str]
    scores: list[float]
    version: str


class RecommendationStore(ABC):
    """A versioned key-value store ``user_id -> (items, scores)``."""

    keep_versions: int

    @abstractmethod
    def publish(self, version: str, as_of: str, model_version: str, rows: Iterable[Row],
                make_current: bool = True) -> str:
        """Write ``rows`` as a complete new ``version`` and make it current (with
        ``make_current=False``, a backfill: complete and listed, ``current`` unchanged).

        Returns the version id now holding ``(as_of, model_version)``: an existing complete
        version with the same pair is returned unchanged (``rows`` is not read and the
        current pointer is not moved, so a retried job cannot undo a rollback).
        """

    @abstractmethod
    def current(self) -> VersionInfo | None:
        """The version readers see now (None before the first publish)."""

    @abstractmethod
    def get(self, user_id: str, version: str | None = None) -> Recs | None:
        """A user's recommendations from the current (or given) version; None if absent."""

    @abstractmethod
    def get_many(self, user_ids: Iterable[str], version: str | None = None) -> dict[str, Recs]:
        """Several users, all read from one version (absent users are left out)."""

    @abstractmethod
    def versions(self, include_incomplete: bool = False) -> list[VersionInfo]:
        """Complete versions, oldest first (unfinished ones too when asked)."""

    @abstractmethod
    def rollback(self, to_version: str | None = None) -> VersionInfo:
        """Make ``to_version`` (default: the complete, non-backfill version before the
        current) current."""

    @abstractmethod
    def keep_last(self, n: int) -> list[str]:
        """Delete all but the ``n`` newest complete versions and the current; return the
        deleted version ids."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> RecommendationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

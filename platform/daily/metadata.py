"""Item metadata of the daily job (``source.item_metadata``) for the recommender's filters.

The daily job reads the item table once per run and writes it, normalised, where the
recommender's ``catalog.item_metadata`` reads it (``metadata.output_path``, default
``item_metadata.parquet`` next to ``store.path``): columns ``item_id``, ``category`` (the
item's categories joined by ``metadata.category_sep``, e.g. ``Action|Comedy``; empty for
none) and ``title`` (empty when the source has none).

Inputs:

* ``source.format: movielens``: ``u.item`` (19 genre flags), ``movies.dat`` or
  ``movies.csv`` (``genres`` already ``|``-separated);
* any other format: a CSV (with header) or Parquet file with columns ``item_id`` and
  ``category`` and, optionally, ``title``.

A row without ``item_id`` or an id listed twice is an error naming the file and the row.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

__all__ = ["ItemMetadataError", "read_item_metadata", "write_item_metadata"]


class ItemMetadataError(ValueError):
    """An item metadata file that cannot be used (the message names the file and the row)."""


def _split(value: object, sep: str) -> list[str]:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return []
    return [c.strip() for c in str(value).split(sep) if c.strip()]


def read_item_metadata(path: str | os.PathLike[str], fmt: str, sep: str = "|") -> pd.DataFrame:
    """``item_id, category, title`` (strings) of ``source.item_metadata``; categories
    normalised (split on ``sep``, stripped, empty ones dropped, joined by ``sep``)."""
    from rayrec.platform.preprocessing.readers import read_movielens_items

    p = Path(path)
    if not p.is_file():
        raise ItemMetadataError(f"source.item_metadata: {p} not found")
    if fmt == "movielens":
        df = read_movielens_items(p)
        src_sep = "|"
    else:
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, dtype=str, keep_default_na=False)
        missing = sorted({"item_id", "category"} - set(df.columns))
        if missing:
            raise ItemMetadataError(
                f"source.item_metadata {p}: missing column(s) {missing} (need item_id, category; "
                f"title optional), has {list(df.columns)[:10]}")
        src_sep = sep
    ids = df["item_id"].astype("string").str.strip()
    bad = ids.isna() | (ids == "")
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0]) + 1
        raise ItemMetadataError(f"source.item_metadata {p}: row {row} has no item_id")
    dup = ids.duplicated(keep=False)
    if dup.any():
        rows = (dup.to_numpy().nonzero()[0][:2] + 1).tolist()
        raise ItemMetadataError(
            f"source.item_metadata {p}: item_id {ids[dup].iloc[0]!r} listed twice (rows {rows})")
    cats = [sep.join(_split(v, src_sep)) for v in df["category"].tolist()]
    titles = df["title"].astype("string").fillna("").tolist() if "title" in df.columns else [""] * len(df)
    return pd.DataFrame({"item_id": ids.tolist(), "category": cats, "title": titles}).astype("string")


def write_item_metadata(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the table atomically (a reader never sees half a file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, p)
    return p

"""Item metadata for models with item-feature inputs (``source.item_metadata`` ->
``item_meta.parquet`` beside ``items.parquet``).

The table has ``item_id`` (string) and one column per categorical field; a list-valued
column is multi-valued (MovieLens genres). ``movielens``: ``u.item`` / ``movies.dat`` /
``movies.csv`` give the field ``genre`` (a list of genre names). Other formats: a CSV
(strings; ``|`` inside a cell separates multiple values) or Parquet file with ``item_id``
and the field columns. Vocabularies are not built here: the training data family builds them
from the training rows (``rayrec.platform.data.load_item_features``, id 0 = unknown).

Bad rows never vanish silently: rows without an ``item_id`` and repeated ids (all but the
first) go to ``item_meta_quarantine.parquet`` with a reason; the counts are returned for the
manifest (``counts.item_meta``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["ITEM_META_FILE", "read_item_meta", "write_item_meta"]

ITEM_META_FILE = "item_meta.parquet"
QUARANTINE_FILE = "item_meta_quarantine.parquet"


def _multi(v: Any, sep: str = "|") -> list[str]:
    if v is None or (isinstance(v, float) and v != v):
        return []
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [s.strip() for s in str(v).split(sep) if s.strip()]


def read_item_meta(path: str, fmt: str) -> pd.DataFrame:
    """``item_id`` + field columns of ``source.item_metadata`` (a missing file names the key)."""
    from rayrec.platform.preprocessing.readers import read_movielens_items

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"source.item_metadata: {p} not found")
    if fmt == "movielens":
        df = read_movielens_items(p)
        return pd.DataFrame({"item_id": df["item_id"].astype(object),
                             "genre": [_multi(v) for v in df["category"].tolist()]})
    df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, dtype=str, keep_default_na=False)
    if "item_id" not in df.columns:
        raise ValueError(f"source.item_metadata {p}: no item_id column; columns present: {list(df.columns)}")
    for c in df.columns:
        if c != "item_id" and df[c].map(lambda v: isinstance(v, str) and "|" in v).any():
            df[c] = [_multi(v) for v in df[c].tolist()]
    return df


def write_item_meta(path: str, fmt: str, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Read, quarantine bad rows, write ``out/item_meta.parquet``; returns the counts."""
    df = read_item_meta(path, fmt)
    ids = df["item_id"].astype("string").str.strip()
    no_id = ids.isna() | (ids == "")
    dup = ids.duplicated(keep="first") & ~no_id
    bad = df.loc[no_id | dup].astype(str).assign(reason=["no item_id" if n else "duplicate item_id"
                                                         for n in no_id[no_id | dup]])
    good = df.loc[~(no_id | dup)].assign(item_id=ids[~(no_id | dup)].astype(str))
    good.to_parquet(out / ITEM_META_FILE, index=False)
    if len(bad):
        bad.to_parquet(out / QUARANTINE_FILE, index=False)
    counts = {"rows": int(len(good)), "fields": [c for c in good.columns if c != "item_id"],
              "quarantined": {"no item_id": int(no_id.sum()), "duplicate item_id": int(dup.sum())}}
    log(f"item metadata: {len(good)} items, fields {counts['fields']}, {len(bad)} row(s) quarantined")
    return counts
